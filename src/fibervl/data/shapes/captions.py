"""Five captions per scene, each phrase naming objects recorded as a grounded span.

Every caption of a scene with up to ``COMPLETE_UP_TO`` (colour, shape) groups names every group:
a template that speaks of counts, colours or one relation ("three shapes", "two red shapes")
goes on to list what it did not name ("... : a red star, a blue ring and a green heart"). A
caption true of many images ("two shapes" fits a third of them) cannot be told from the others'
captions by text, so it caps text-to-image retrieval (a caption shared by N images is found at
rank 1 one time in N) and turns ITM's hard negatives into true captions labelled false.
"""

from __future__ import annotations

import random

from .describe import (
    RELATION_WORDS, Text, TextBuilder, article, count_phrase, groups, relation, unique_pairs,
)
from .scene import SceneSpec
from .vocab import NUMBER_WORDS

# Scenes with more groups than this keep their partial captions: listing every group would
# overrun the 40-token text length.
COMPLETE_UP_TO = 3


def captions(scene: SceneSpec, rng: random.Random, n: int = 5) -> list[Text]:
    """``n`` different captions, each from a different template where possible."""
    makers = [_cap_list, _cap_relation, _cap_count_all, _cap_color_count, _cap_shape_count,
              _cap_size, _cap_background]
    rng.shuffle(makers)
    out, seen = [], set()
    for maker in makers * 2:
        if len(out) == n:
            break
        text = maker(scene, rng)
        if text is not None and text.text not in seen:
            seen.add(text.text)
            out.append(text)
    return out


def _add_groups(b: TextBuilder, scene, keys) -> TextBuilder:
    """Append "a red star, two blue rings and a green heart" for the (colour, shape) ``keys``."""
    g = groups(scene)
    for k, key in enumerate(keys):
        if k:
            b.add(" and " if k == len(keys) - 1 else ", ")
        b.add(count_phrase(len(g[key]), *key), tuple(g[key]))
    return b


def _complete(b: TextBuilder, scene, rng, named=(), lead=": ") -> TextBuilder:
    """Name, after ``lead``, the groups of a scene with at most COMPLETE_UP_TO groups that are
    not among the (colour, shape) keys ``named``."""
    g = groups(scene)
    if len(g) > COMPLETE_UP_TO:
        return b
    rest = [key for key in g if key not in named]
    rng.shuffle(rest)
    return _add_groups(b.add(lead), scene, rest) if rest else b


def _cap_list(scene, rng):
    g = list(groups(scene))
    rng.shuffle(g)
    if len(g) > COMPLETE_UP_TO:
        g = g[: rng.randint(2, 3)]
    b = TextBuilder().add(rng.choice(["", "", "a picture of ", "an image with "]))
    return _add_groups(b, scene, g).build("list")


def _cap_relation(scene, rng):
    # "a red star" is only unambiguous when no other red star is in the image.
    g = groups(scene)
    pairs = [(i, j) for i, j in unique_pairs(scene)
             if len(g[scene.objects[i].key]) == 1 and len(g[scene.objects[j].key]) == 1]
    if not pairs:
        return None
    i, j = rng.choice(pairs)
    o, p = scene.objects[i], scene.objects[j]
    rel = rng.choice(sorted(relation(o, p, scene)))
    a_desc, b_desc = f"{o.color} {o.shape}", f"{p.color} {p.shape}"
    b = TextBuilder()
    form = rng.randrange(3)
    if form == 0:    # "a red star to the left of a blue square"
        b.add(f"{article(a_desc)} {a_desc}", (i,)).add(f" {RELATION_WORDS[rel]} ").add(f"{article(b_desc)} {b_desc}", (j,))
    elif form == 1:  # "a red star is to the left of a blue square"
        b.add(f"{article(a_desc)} {a_desc}", (i,)).add(f" is {RELATION_WORDS[rel]} ").add(f"{article(b_desc)} {b_desc}", (j,))
    else:            # "there is a red star to the left of a blue square"
        b.add("there is ").add(f"{article(a_desc)} {a_desc}", (i,)).add(f" {RELATION_WORDS[rel]} ")
        b.add(f"{article(b_desc)} {b_desc}", (j,))
    return _complete(b, scene, rng, named=(o.key, p.key), lead=", with ").build("relation")


def _cap_count_all(scene, rng):
    n = len(scene.objects)
    b = TextBuilder()
    lead = rng.choice(["", "there is " if n == 1 else "there are ", "a picture of "])
    b.add(lead).add(f"{NUMBER_WORDS[n]} shape" + ("" if n == 1 else "s"), tuple(range(n)))
    b.add(rng.choice([f" on a {scene.background} background", ""]))
    return _complete(b, scene, rng).build("count")


def _cap_color_count(scene, rng):
    by_color: dict[str, list[int]] = {}
    for i, o in enumerate(scene.objects):
        by_color.setdefault(o.color, []).append(i)
    colors = sorted(by_color, key=lambda c: (-len(by_color[c]), c))[:2]
    b = TextBuilder()
    for k, c in enumerate(colors):
        if k:
            b.add(" and ")
        b.add(count_phrase(len(by_color[c]), c, None), tuple(by_color[c]))
    return _complete(b, scene, rng).build("color_count")


def _cap_shape_count(scene, rng):
    by_shape: dict[str, list[int]] = {}
    for i, o in enumerate(scene.objects):
        by_shape.setdefault(o.shape, []).append(i)
    shape = rng.choice(sorted(by_shape))
    b = TextBuilder()
    phrase = count_phrase(len(by_shape[shape]), None, shape)
    if rng.random() < 0.5:
        b.add("there " + ("is " if len(by_shape[shape]) == 1 else "are ")).add(phrase, tuple(by_shape[shape]))
        b.add(" in the picture")
    else:
        n = len(scene.objects)
        b.add(phrase, tuple(by_shape[shape])).add(" alone" if n == 1 else f" among {NUMBER_WORDS[n]} shapes")
    return _complete(b, scene, rng).build("shape_count")


def _cap_size(scene, rng):
    objs = scene.objects
    big = [i for i, o in enumerate(objs) if o.size == "large" and len(groups(scene)[o.key]) == 1]
    small = [i for i, o in enumerate(objs) if o.size == "small" and len(groups(scene)[o.key]) == 1]
    if not big or not small:
        return None
    i, j = rng.choice(big), rng.choice(small)
    bi, sj = f"large {objs[i].color} {objs[i].shape}", f"small {objs[j].color} {objs[j].shape}"
    if rng.random() < 0.5:
        b = TextBuilder().add(f"a {bi}", (i,)).add(" and ").add(f"a {sj}", (j,))
    else:
        b = TextBuilder().add(f"a {sj}", (j,)).add(rng.choice([" next to ", " and "])).add(f"a {bi}", (i,))
    return _complete(b, scene, rng, named=(objs[i].key, objs[j].key), lead=", with ").build("size")


def _cap_background(scene, rng):
    g = groups(scene)
    key = rng.choice(sorted(g))
    b = TextBuilder().add(count_phrase(len(g[key]), *key), tuple(g[key]))
    b.add(f" on a {scene.background} background")
    return _complete(b, scene, rng, named=(key,), lead=", with ").build("background")

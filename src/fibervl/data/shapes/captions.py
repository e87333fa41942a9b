"""Five captions per scene, each phrase naming objects recorded as a grounded span."""

from __future__ import annotations

import random

from .describe import (
    RELATION_WORDS, Text, TextBuilder, article, count_phrase, groups, relation, unique_pairs,
)
from .scene import SceneSpec
from .vocab import NUMBER_WORDS


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


def _cap_list(scene, rng):
    g = list(groups(scene).items())
    rng.shuffle(g)
    g = g[: rng.randint(2, 3)] if len(g) >= 2 else g
    b = TextBuilder().add(rng.choice(["", "", "a picture of ", "an image with "]))
    for k, ((color, shape), idx) in enumerate(g):
        if k:
            b.add(" and " if k == len(g) - 1 else ", ")
        b.add(count_phrase(len(idx), color, shape), tuple(idx))
    return b.build("list")


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
    return b.build("relation")


def _cap_count_all(scene, rng):
    n = len(scene.objects)
    b = TextBuilder()
    lead = rng.choice(["", "there is " if n == 1 else "there are ", "a picture of "])
    b.add(lead).add(f"{NUMBER_WORDS[n]} shape" + ("" if n == 1 else "s"), tuple(range(n)))
    b.add(rng.choice([f" on a {scene.background} background", ""]))
    return b.build("count")


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
    return b.build("color_count")


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
    return b.build("shape_count")


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
    return b.build("size")


def _cap_background(scene, rng):
    g = groups(scene)
    key = rng.choice(sorted(g))
    b = TextBuilder().add(count_phrase(len(g[key]), *key), tuple(g[key]))
    b.add(f" on a {scene.background} background")
    return b.build("background")

"""RefCOCO-style referring expressions: each is true of exactly one object."""

from __future__ import annotations

import random

from .describe import RELATION_WORDS, Text, TextBuilder, describe, margin, relation
from .scene import SceneSpec


def referring_expressions(scene: SceneSpec, rng: random.Random, max_targets: int = 3) -> list[tuple[int, Text]]:
    """RefCOCO-style expressions, each true of exactly one object: (target index, text).

    The span of the target's own noun phrase ("the red star") is recorded as its phrase.
    """
    objs = scene.objects
    order = list(range(len(objs)))
    rng.shuffle(order)
    # Prefer targets that need more than one attribute: they are what makes the task hard.
    order.sort(key=lambda i: describe(scene, i) is not None and len(describe(scene, i).split()) == 1)
    out = []
    for i in order[:max_targets]:
        forms = _ref_forms(scene, i)
        if forms:
            # Pick the kind first (attribute / position / relation), then a form of that kind:
            # relation forms are the most numerous and would otherwise crowd out the rest.
            kinds = sorted({f.kind for f in forms})
            kind = rng.choice(kinds)
            out.append((i, rng.choice([f for f in forms if f.kind == kind])))
    return out


def _ref_forms(scene, i):
    objs = scene.objects
    t = objs[i]
    forms: list[Text] = []
    d = describe(scene, i)
    if d is not None:
        forms.append(TextBuilder().add(f"the {d}", (i,)).build("attribute"))
    same = [j for j, o in enumerate(objs) if o.key == t.key]
    m = margin(scene)
    name = f"{t.color} {t.shape}"
    if len(same) > 1:
        for axis, lo_word, hi_word in ((0, "left", "right"), (1, "top", "bottom")):
            coords = sorted((objs[j].center[axis], j) for j in same)
            if coords[0][1] == i and coords[1][0] - coords[0][0] > m:
                word = lo_word
            elif coords[-1][1] == i and coords[-1][0] - coords[-2][0] > m:
                word = hi_word
            else:
                continue
            if len(same) == 2:
                b = TextBuilder().add(f"the {name}", (i,)).add(f" on the {word}" if axis == 0 else f" at the {word}")
            else:
                sup = {"left": "leftmost", "right": "rightmost", "top": "topmost", "bottom": "lowest"}[word]
                b = TextBuilder().add(f"the {sup} {name}", (i,))
            forms.append(b.build("position"))
    # Relation to a uniquely described anchor that no other look-alike shares.
    for j in range(len(objs)):
        dj = describe(scene, j)
        if j == i or dj is None:
            continue
        for rel in sorted(relation(t, objs[j], scene)):
            if all(rel not in relation(objs[k], objs[j], scene) for k in same if k != i):
                b = TextBuilder().add(f"the {name}", (i,)).add(f" {RELATION_WORDS[rel]} ").add(f"the {dj}", (j,))
                forms.append(b.build("relation"))
    return forms

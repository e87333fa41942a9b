"""NLVR2-style statements about a pair of scenes."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .describe import RELATION_WORDS, article, count_where, relation, unique_pairs
from .scene import SceneSpec
from .vocab import NUMBER_WORDS, plural


NLVR2_TEMPLATES = ("count_left", "count_right", "more", "both", "exactly_one", "total", "relation_in")


@dataclass
class Nlvr2Statement:
    """A statement about an image pair; ``truth(left, right)`` evaluates it on any pair.

    The generator draws the statement from one random pair, then the wanted label, then
    searches a pair making the statement that label: the text alone says nothing of the label.
    """

    template: str
    text: str
    color: str | None = None
    shape: str | None = None
    number: int = 0
    side: str = "left"
    pair_keys: tuple = ()
    rel: str = ""

    def count(self, scene: SceneSpec) -> int:
        return count_where(scene, self.color, self.shape)

    def truth(self, left: SceneSpec, right: SceneSpec) -> bool | None:
        t = self.template
        if t == "count_left":
            return self.count(left) == self.number
        if t == "count_right":
            return self.count(right) == self.number
        if t == "more":
            cl, cr = self.count(left), self.count(right)
            return None if cl == cr else cl > cr  # ties make the statement odd: avoid such pairs
        if t == "both":
            return self.count(left) > 0 and self.count(right) > 0
        if t == "exactly_one":
            return (self.count(left) > 0) != (self.count(right) > 0)
        if t == "total":
            return self.count(left) + self.count(right) == self.number
        if t == "relation_in":
            scene = left if self.side == "left" else right
            (ka, kb) = self.pair_keys
            return any(x.key == ka and y.key == kb and self.rel in relation(x, y, scene)
                       for x in scene.objects for y in scene.objects if x is not y)
        raise ValueError(f"unknown NLVR2 template {t!r}")


def nlvr2_statement(template: str, left: SceneSpec, right: SceneSpec, rng: random.Random) -> Nlvr2Statement | None:
    """Draw a statement of ``template`` with parameters taken from the content of a pair
    (so that it is plausible), or None if this pair offers none."""
    pool = left.objects + right.objects
    o = rng.choice(pool)
    use_color = rng.random() < 0.5
    color = o.color if use_color else None
    shape = o.shape if (not use_color or rng.random() < 0.5) else None

    def noun(n):
        if shape:
            head = f"{color} {shape}" if color else shape
            return head if n == 1 else (f"{color} {plural(shape)}" if color else plural(shape))
        return f"{color} shape" if n == 1 else f"{color} shapes"

    st = Nlvr2Statement(template, "", color, shape)
    if template in ("count_left", "count_right"):
        st.side = "left" if template == "count_left" else "right"
        st.number = rng.randint(1, 3)
        st.text = f"the {st.side} image contains exactly {NUMBER_WORDS[st.number]} {noun(st.number)}."
    elif template == "more":
        st.text = f"there are more {noun(2)} in the left image than in the right image."
    elif template == "both":
        st.text = f"both images contain at least one {noun(1)}."
    elif template == "exactly_one":
        head = noun(1)
        st.text = f"exactly one image contains {article(head)} {head}."
    elif template == "total":
        st.number = rng.randint(1, 4)
        st.text = f"there are {NUMBER_WORDS[st.number]} {noun(st.number)} in total."
    elif template == "relation_in":
        st.side = rng.choice(["left", "right"])
        src = rng.choice([left, right])
        pairs = unique_pairs(src)
        if not pairs:
            return None
        i, j = rng.choice(pairs)
        a, b = src.objects[i], src.objects[j]
        st.rel = rng.choice(sorted(relation(a, b, src)))
        st.pair_keys = (a.key, b.key)
        an, bn = f"{a.color} {a.shape}", f"{b.color} {b.shape}"
        st.text = f"in the {st.side} image, {article(an)} {an} is {RELATION_WORDS[st.rel]} {article(bn)} {bn}."
    else:
        raise ValueError(f"unknown NLVR2 template {template!r}")
    return st

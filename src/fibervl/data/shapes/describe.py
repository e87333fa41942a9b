"""Shared language of the shapes set: grounded text building, spatial relations, and the
shortest description that singles out one object.

Why: a phrase such as "a red circle" must name every red circle in the image or be
unambiguous, so captions talk about (colour, shape) *groups*; questions and referring
expressions use the shortest description that picks out one object ("the star", "the red
star", "the small red star"), and relations only when the objects are clearly apart.
Objects are referred to by their index in ``scene.objects``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .scene import ObjectSpec, SceneSpec
from .vocab import NUMBER_WORDS, plural

# Objects closer than this fraction of the image side are not called left/right/above/below
# of each other: the relation would be unclear to a person too.
RELATION_MARGIN = 0.08


@dataclass
class Phrase:
    """A character span of a text naming a set of objects (indices into scene.objects)."""

    start: int
    end: int
    objects: tuple[int, ...]


@dataclass
class Text:
    text: str
    phrases: list[Phrase] = field(default_factory=list)
    kind: str = ""  # template family, e.g. "relation"


class TextBuilder:
    """Concatenate pieces, recording the span of the pieces that name objects."""

    def __init__(self):
        self.parts: list[str] = []
        self.length = 0
        self.phrases: list[Phrase] = []

    def add(self, piece: str, objects: tuple[int, ...] | None = None) -> "TextBuilder":
        if objects:
            self.phrases.append(Phrase(self.length, self.length + len(piece), tuple(objects)))
        self.parts.append(piece)
        self.length += len(piece)
        return self

    def build(self, kind: str) -> Text:
        return Text("".join(self.parts), self.phrases, kind)


# ---------------------------------------------------------------------- scene geometry
def margin(scene: SceneSpec) -> float:
    return RELATION_MARGIN * scene.size


def relation(a: ObjectSpec, b: ObjectSpec, scene: SceneSpec) -> set[str]:
    """Relations that clearly hold from a to b: subset of {left, right, above, below}."""
    (ax, ay), (bx, by), m = a.center, b.center, margin(scene)
    out = set()
    if ax + m < bx:
        out.add("left")
    if ax > bx + m:
        out.add("right")
    if ay + m < by:
        out.add("above")
    if ay > by + m:
        out.add("below")
    return out


RELATION_WORDS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}


def groups(scene: SceneSpec) -> dict[tuple[str, str], list[int]]:
    """(colour, shape) -> object indices, in drawing order."""
    out: dict[tuple[str, str], list[int]] = {}
    for i, o in enumerate(scene.objects):
        out.setdefault(o.key, []).append(i)
    return out


def count_where(scene: SceneSpec, color: str | None = None, shape: str | None = None) -> int:
    return sum(1 for o in scene.objects if (color is None or o.color == color) and (shape is None or o.shape == shape))


def describe(scene: SceneSpec, index: int, use_color: bool = True, use_size: bool = True) -> str | None:
    """Shortest attribute description ("star", "red star", "small red star") that matches only
    object ``index``; None if attributes alone cannot single it out."""
    cache = scene.__dict__.setdefault("_describe_cache", {})  # called often per scene
    if (index, use_color, use_size) not in cache:
        cache[(index, use_color, use_size)] = _describe(scene, index, use_color, use_size)
    return cache[(index, use_color, use_size)]


def _describe(scene: SceneSpec, index: int, use_color: bool, use_size: bool) -> str | None:
    objs = scene.objects
    t = objs[index]
    candidates = [("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape")]
    for attrs in candidates:
        if ("color" in attrs and not use_color) or ("size" in attrs and not use_size):
            continue
        matches = [o for o in objs if all(getattr(o, a) == getattr(t, a) for a in attrs)]
        if len(matches) == 1:
            return " ".join(getattr(t, a) for a in attrs)
    return None


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def count_phrase(n: int, color: str | None, shape: str | None) -> str:
    """"a red circle", "two red circles", "three stars", "four blue shapes"."""
    noun = shape if shape else "shape"
    words = ([color] if color else [])
    if n == 1:
        head = " ".join(words + [noun])
        return f"{article(head)} {head}"
    return " ".join([NUMBER_WORDS[n]] + words + [plural(noun) if shape else "shapes"])


def unique_pairs(scene, need_relation=True):
    objs = scene.objects
    uniq = [i for i in range(len(objs)) if describe(scene, i) is not None]
    pairs = []
    for i in uniq:
        for j in uniq:
            if i != j and (not need_relation or relation(objs[i], objs[j], scene)):
                pairs.append((i, j))
    return pairs


def uniquely_described(scene, use_color=True):
    return [(i, d) for i in range(len(scene.objects)) if (d := describe(scene, i, use_color)) is not None]

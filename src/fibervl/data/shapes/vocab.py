"""The closed vocabulary of the shapes data set: shape classes, colours, sizes, backgrounds.

Kept small and regular on purpose: the tiny model trains on it for minutes on a CPU.
"""

from __future__ import annotations

import re

# Ten shape classes; category ids are 1-based positions in this tuple (COCO style).
SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "hexagon",
    "diamond", "cross", "heart", "ring", "crescent",
)
# Never named in fine-grained training (grounding / referring / detection train and val);
# present with names in the test files, for zero-shot (open-vocabulary) evaluation.
HELD_OUT_SHAPES: tuple[str, ...] = ("heart", "crescent")
SEEN_SHAPES: tuple[str, ...] = tuple(s for s in SHAPES if s not in HELD_OUT_SHAPES)

PLURALS = {s: s + "s" for s in SHAPES} | {"cross": "crosses"}

# Saturated colours far from the muted, mid-grey backgrounds; RGB 0..255.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (240, 135, 20),
    "yellow": (235, 215, 30),
    "green": (35, 160, 55),
    "blue": (35, 75, 215),
    "purple": (135, 45, 180),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
# Colours a careless annotator may name instead (drives realistic VQA disagreement).
CONFUSABLE_COLORS = {
    "red": ("orange", "purple"), "orange": ("red", "yellow"), "yellow": ("orange", "white"),
    "green": ("blue", "yellow"), "blue": ("purple", "green"), "purple": ("blue", "red"),
    "white": ("yellow",), "black": ("purple", "blue"),
}
CONFUSABLE_SHAPES = {
    "circle": ("ring",), "square": ("diamond",), "triangle": ("diamond",), "star": ("cross",),
    "hexagon": ("circle",), "diamond": ("square",), "cross": ("star",), "heart": ("triangle",),
    "ring": ("circle",), "crescent": ("circle",),
}

# Object size classes as fractions of the image side (the longer extent of the shape).
# At 128 px: small 13-18 px, medium 23-32 px, large 38-51 px.
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.10, 0.14),
    "medium": (0.18, 0.25),
    "large": (0.30, 0.40),
}
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)
SIZE_RANK = {name: i for i, name in enumerate(SIZE_NAMES)}

# Words that trade places in a caption (or, a pair, replace each other) to bind the same things
# the other way: "a red star left of a blue ring" -> "a blue star left of a red ring": the
# coarse stage's ``objectives.swap_words`` for this set, and bench/itm_binding_probe.py's.
SWAP_GROUPS: tuple[tuple[str, ...], ...] = (COLOR_NAMES, SHAPES, ("small", "large"), ("left", "right"), ("above", "below"))

BACKGROUNDS: tuple[str, ...] = ("plain", "striped", "checkered", "speckled", "cloudy")
TEXTURES: tuple[str, ...] = ("solid", "stripes", "dots", "noise", "gradient")

NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def plural(shape: str) -> str:
    return PLURALS[shape]


def shape_names_pattern(shapes) -> re.Pattern:
    """A regex finding any of ``shapes`` (a non-empty collection), singular or plural, as a whole
    word: e.g. the held-out shapes named in a text."""
    words = {w for s in shapes for w in (s, PLURALS.get(s, s + "s"))}
    return re.compile(r"\b(" + "|".join(map(re.escape, sorted(words, key=len, reverse=True))) + r")\b")


def category_id(shape: str) -> int:
    """COCO-style 1-based category id of a shape class."""
    return SHAPES.index(shape) + 1

"""The embedded shapes data set: a seeded generator of grounded scenes in real formats."""

from .config import SIZE_PRESETS, ShapesConfig, parse_size
from .generator import generate
from .layout import ShapesDataset
from .vocab import COLOR_NAMES, HELD_OUT_SHAPES, SEEN_SHAPES, SHAPES, SIZE_NAMES


__all__ = [
    "COLOR_NAMES", "HELD_OUT_SHAPES", "SEEN_SHAPES", "SHAPES", "SIZE_NAMES", "SIZE_PRESETS",
    "ShapesConfig", "ShapesDataset", "generate", "parse_size",
]

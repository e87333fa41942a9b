"""The embedded shapes data set: a seeded generator of grounded scenes in real formats."""

from .baselines import compute_baselines, vqa_accuracy
from .config import SIZE_PRESETS, ShapesConfig, parse_size
from .generator import generate
from .layout import ShapesDataset
from .vocab import COLOR_NAMES, HELD_OUT_SHAPES, SEEN_SHAPES, SHAPES, SIZE_NAMES


def baselines(root):
    """Recompute the baselines of a generated directory (same as its baselines.json)."""
    return compute_baselines(root)


__all__ = [
    "COLOR_NAMES", "HELD_OUT_SHAPES", "SEEN_SHAPES", "SHAPES", "SIZE_NAMES", "SIZE_PRESETS",
    "ShapesConfig", "ShapesDataset", "baselines", "compute_baselines", "generate", "parse_size", "vqa_accuracy",
]

"""Settings of the shapes generator and the file naming shared by its writers."""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "val", "test")
SIZE_PRESETS = {"tiny": 60, "small": 1000, "default": 10000, "large": 50000}
IMAGE_TEMPLATE = "{split}/shapes_{split}_{image_id:012d}.{ext}"


@dataclass
class ShapesConfig:
    """size: training images; val and test get size // 10 each (at least 20)."""

    size: int = SIZE_PRESETS["default"]
    seed: int = 0
    image_size: int = 128
    image_format: str = "jpg"
    workers: int = 2
    captions_per_image: int = 5
    questions_per_image: int = 6
    refexp_targets_per_image: int = 3
    # 2 statements per image: at 0.5 a 300-image test split had 136 statements, too few to
    # tell a 2-point gain from noise (standard error 4.3 points).
    nlvr2_per_image: float = 2.0
    vocab_size: int = 1000
    webdataset: bool = True
    # Difficulty: objects per image and the background kinds drawn from (defaults: the full set).
    min_objects: int = 2
    max_objects: int = 8
    backgrounds: tuple[str, ...] = ("plain", "striped", "checkered", "speckled", "cloudy")

    def __post_init__(self) -> None:
        from .vocab import BACKGROUNDS

        if not self.nlvr2_per_image > 0:
            raise ValueError(f"nlvr2_per_image must be positive, got {self.nlvr2_per_image}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}..{self.max_objects}")
        unknown = set(self.backgrounds) - set(BACKGROUNDS)
        if not self.backgrounds or unknown:
            raise ValueError(f"backgrounds must be a non-empty subset of {BACKGROUNDS}, got {self.backgrounds}")

    def split_sizes(self) -> dict[str, int]:
        held = max(20, self.size // 10)
        return {"train": self.size, "val": held, "test": held}


def parse_size(value: str | int) -> int:
    """An int, or a preset name: tiny (60), small (1000), default (10000), large (50000)."""
    if isinstance(value, int):
        n = value
    elif str(value) in SIZE_PRESETS:
        n = SIZE_PRESETS[str(value)]
    else:
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"--size must be an integer or one of {sorted(SIZE_PRESETS)}, got {value!r}") from None
    if n < 10:
        raise ValueError(f"--size must be at least 10 training images, got {n}")
    return n


def image_file_name(split: str, image_id: int, ext: str) -> str:
    return f"shapes_{split}_{image_id:012d}.{ext}"

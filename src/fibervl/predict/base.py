"""What every predictor shares: the model and its processor, batching, the device, precision.

A predictor's ``predict(...)`` takes lists (images as paths, PIL images or
:class:`~fibervl.predict.processor.LoadedImage`) and returns one JSON-ready dict per item, in
order, computed ``batch_size`` items at a time: the same results as one item at a time (tested).
Boxes are in the pixels of the image as :func:`~fibervl.data.load_image` returns it (EXIF
orientation applied). ``draw(result, image)`` is a picture of one result.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..engine.precision import eval_autocast
from .processor import ImageLike, InputProcessor, LoadedImage


class Predictor:
    """``model`` (in eval mode; left on its device), ``processor`` (from :func:`fibervl.load`,
    set up for this predictor's task), ``batch_size`` items per forward, ``bf16`` autocast.
    Subclasses define ``task``, ``predict(...) -> list[dict]`` and ``draw(result, image) -> PIL``."""

    task = ""

    def __init__(self, model, processor: InputProcessor, batch_size: int = 16, bf16: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.processor = processor.for_task(self.task)
        self.batch_size, self.bf16 = batch_size, bf16

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def autocast(self):
        return eval_autocast(self.device, self.bf16)

    def batches(self, *columns: Sequence) -> Iterator[tuple[list, ...]]:
        """Equal-length ``columns`` cut into rows of ``batch_size``: tuples of lists."""
        n = len(columns[0])
        if any(len(c) != n for c in columns):
            raise ValueError(f"inputs of different lengths: {[len(c) for c in columns]}")
        for start in range(0, n, self.batch_size):
            yield tuple(list(c[start:start + self.batch_size]) for c in columns)

    def open(self, images: Sequence[ImageLike | LoadedImage]) -> list[LoadedImage]:
        return [self.processor.open(im) for im in images]

    def __call__(self, *args, **kwargs) -> list[dict[str, Any]]:
        return self.predict(*args, **kwargs)


def per_item(value, n: int, name: str) -> list:
    """``value`` for each of ``n`` items: a single string given for all, or a list of ``n``."""
    if isinstance(value, str):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{len(value)} {name} for {n} images")
    return value


def rounded(x: float, digits: int = 4) -> float:
    return round(float(x), digits)

"""Sample -> model inputs: load images, transform, and (in :class:`Collator`) tokenize and pad.

    reader[i] --Processor--> ProcessedSample --Collator--> Batch
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from .errors import DataError, SkipLog, handle, skipping_on
from .image_io import DEFAULT_MAX_PIXELS, load_image, to_rgb
from .samples import Sample
from .transforms import Normalize, to_tensor


def sync_image_size(image: Image.Image, sample: Sample, path: Path | str, tolerance: float = 0.02) -> Sample:
    """Make boxes refer to ``image``: rescale when the image was loaded smaller (same aspect),
    and refuse an image whose aspect differs from the annotated size (e.g. an EXIF rotation
    the annotations did not see), naming the file and the record."""
    if sample.width is None or sample.height is None or (image.width, image.height) == (sample.width, sample.height):
        return replace(sample, width=image.width, height=image.height)
    sx, sy = image.width / sample.width, image.height / sample.height
    if abs(sx - sy) > tolerance * max(sx, sy):
        raise DataError(path, f"image is {image.width}x{image.height} (after EXIF orientation) but the annotation says "
                              f"{sample.width}x{sample.height}", sample.sample_id)
    boxes = sample.boxes * torch.tensor([sx, sy, sx, sy], dtype=torch.float32) if sample.num_boxes else sample.boxes
    return replace(sample, boxes=boxes, width=image.width, height=image.height)


@dataclass
class ProcessedSample:
    """pixel_values: [3, H, W] float32 normalised (None: a text-only sample whose image a task
    finds by path, e.g. in a cache of image prefixes); pixel_values2 likewise for NLVR2's right
    image; sample: the transformed Sample (text, boxes in the H x W frame, spans, answers)."""

    pixel_values: torch.Tensor | None
    sample: Sample
    pixel_values2: torch.Tensor | None = None


class Processor:
    """Load a sample's image(s), apply ``transforms`` (PIL stage), convert and normalise.

    skip_bad: an unreadable image makes ``__call__`` return None (counted in ``skipped``)
    instead of raising; :class:`Collator` drops the Nones.
    """

    def __init__(self, transforms: Callable | None = None, normalize: Normalize | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = 4096, skip_bad: bool = False):
        self.transforms = transforms
        self.normalize = normalize or Normalize()
        self.max_pixels, self.max_side = max_pixels, max_side
        self.skip_bad = skip_bad
        self.skipped = SkipLog()
        if skip_bad:
            skipping_on()

    def _load(self, image, path, sample):
        if image is not None:
            # as a file would be: alpha composited on white, 16-bit scaled rather than clipped
            return to_rgb(image, name=path or "<memory>", record=sample.sample_id)
        if path is None:
            raise DataError(None, "sample has neither an image nor an image path", sample.sample_id)
        return load_image(path, max_pixels=self.max_pixels, max_side=self.max_side, record=sample.sample_id)

    def __call__(self, sample: Sample) -> ProcessedSample | None:
        try:
            image = self._load(sample.image, sample.image_path, sample)
            sample = sync_image_size(image, sample, sample.image_path or "<memory>")
            image2 = None
            if sample.image2_path is not None or sample.image2 is not None:
                image2 = self._load(sample.image2, sample.image2_path, sample)
        except DataError as err:
            handle(err, self.skip_bad, self.skipped)
            return None
        if self.transforms is not None:
            image, sample = self.transforms(image, sample)
            if image2 is not None:
                # The right image gets its own draw of the random transforms, never the text
                # edits: its sample copy is thrown away.
                image2, _ = self.transforms(image2, replace(sample, boxes=torch.zeros((0, 4)), text="",
                                                            category_ids=torch.zeros(0, dtype=torch.int64),
                                                            tokens_positive=[], answers=[]))
        pv = self.normalize(to_tensor(image))
        pv2 = self.normalize(to_tensor(image2)) if image2 is not None else None
        # The loaded images are not kept in the sample: batches stay light.
        return ProcessedSample(pv, replace(sample, image=None, image2=None), pv2)

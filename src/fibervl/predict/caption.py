"""Captioning: beam search (or greedy) decoding in caption mode, with the key/value cache."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from ..tasks.caption import caption_images
from ..tasks.decoding import DecodeConfig
from .base import Predictor
from .draw import with_text
from .processor import ImageLike, LoadedImage


class CaptionPredictor(Predictor):
    """``predict(images)`` -> per image ``{"image", "caption"}``. Decoding: ``beam`` hypotheses
    (1 = greedy), at most ``max_length`` tokens, ``length_penalty`` (see
    :class:`~fibervl.tasks.decoding.DecodeConfig`)."""

    task = "caption"

    def __init__(self, model, processor, beam: int = 3, max_length: int = 20, length_penalty: float = 1.0,
                 batch_size: int = 16, bf16: bool = False) -> None:
        super().__init__(model, processor, batch_size, bf16)
        if "caption" not in model.config.heads:
            raise ValueError(f"this model has no caption head (heads {list(model.config.heads)})")
        self.decode = DecodeConfig(beam_size=beam, max_length=max_length, length_penalty=length_penalty)

    @torch.no_grad()
    def predict(self, images: Sequence[ImageLike | LoadedImage]) -> list[dict]:
        out = []
        for (batch,) in self.batches(self.open(images)):
            pixels = self.processor.images(batch).pixels
            captions = caption_images(self.model, self.processor.tokenizer, pixels, self.decode, self.bf16)
            out += [{"image": image.source, "caption": c} for image, c in zip(batch, captions)]
        return out

    def draw(self, result: dict, image: LoadedImage) -> Image.Image:
        return with_text(image.image, [result["caption"]], height=256)

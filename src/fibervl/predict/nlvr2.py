"""NLVR2: is a statement true of a pair of images (left, right)?"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from ..tasks.nlvr2 import nlvr2_logits
from .base import Predictor, per_item, rounded
from .draw import side_by_side, with_text
from .processor import ImageLike, LoadedImage


class Nlvr2Predictor(Predictor):
    """``predict(lefts, rights, statements)`` (one statement per pair, or one string for all)
    -> per pair ``{"left", "right", "text", "answer": bool, "p_true"}``."""

    task = "nlvr2"

    @torch.no_grad()
    def predict(self, lefts: Sequence[ImageLike | LoadedImage], rights: Sequence[ImageLike | LoadedImage],
                statements: str | Sequence[str]) -> list[dict]:
        lefts, rights = self.open(lefts), self.open(rights)
        statements = per_item(statements, len(lefts), "statements")
        out = []
        for left, right, texts in self.batches(lefts, rights, statements):
            tok = self.processor.text(texts, "statements")
            d = self.device
            with self.autocast():
                logits = nlvr2_logits(self.model, self.processor.images(left).pixels.to(d),
                                      self.processor.images(right).pixels.to(d), tok.input_ids.to(d),
                                      tok.attention_mask.to(d)).float()
            for a, b, text, p in zip(left, right, texts, logits.softmax(-1)[:, 1].tolist()):
                out.append({"left": a.source, "right": b.source, "text": text, "answer": p > 0.5, "p_true": rounded(p)})
        return out

    def draw(self, result: dict, images: tuple[LoadedImage, LoadedImage]) -> Image.Image:
        row = side_by_side([with_text(im.image, [], height=256, min_width=1) for im in images])
        return with_text(row, [result["text"], f"{result['answer']} (p = {result['p_true']:.2f})"])

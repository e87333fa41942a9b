"""Predictors of the grounding detector: detection over any number of class names, phrase
grounding, referring expressions. Boxes come back in the original image's pixels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from ..tasks.grounding import detect_with_prompt, rank_phrase_boxes
from .base import Predictor, per_item, rounded
from .draw import draw_boxes
from .processor import ImageLike, LoadedImage


def _boxes_json(boxes: torch.Tensor, image: LoadedImage) -> list[list[float]]:
    """[N, 4] xyxy in the original pixels -> lists rounded to 0.1 px, clipped to the image."""
    w, h = image.size
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    return [[round(v, 1) for v in b] for b in boxes.tolist()]


def _header(image: LoadedImage) -> dict:
    return {"image": image.source, "width": image.size[0], "height": image.size[1]}


class DetectionPredictor(Predictor):
    """Boxes of ``classes`` (any number: the names are split into prompts that fit the
    detector's query length, see :meth:`InputProcessor.detection_prompts`, and the detections of
    all prompts merged by score). Keeps boxes scoring at least ``threshold``, and of those only
    the ``top`` best when ``top`` > 0.

    ``predict(images)`` -> per image ``{"image", "width", "height", "detections": [{"class",
    "score", "box": [x0, y0, x1, y1]}, ...]}`` best first.
    """

    task = "detect"

    def __init__(self, model, processor, classes: Sequence[str], threshold: float = 0.3, top: int = 0,
                 chunk_size: int = 40, batch_size: int = 8, bf16: bool = False) -> None:
        super().__init__(model, processor, batch_size, bf16)
        self.classes = [c.strip() for c in classes]
        self.threshold, self.top = threshold, top
        self.chunks = self.processor.detection_prompts(self.classes, chunk_size)

    @torch.no_grad()
    def predict(self, images: Sequence[ImageLike | LoadedImage]) -> list[dict]:
        out = []
        for (batch,) in self.batches(self.open(images)):
            inputs = self.processor.images(batch)
            with self.autocast():
                dets = detect_with_prompt(self.model, inputs.pixels.to(self.device), inputs.input_sizes, self.chunks)
            for image, size, (boxes, scores, labels) in zip(batch, inputs.input_sizes, dets):
                keep = (scores >= self.threshold).nonzero().flatten()  # scores are sorted: best first
                if self.top > 0:
                    keep = keep[:self.top]
                boxes = self.processor.to_original(boxes[keep].float(), size, image)
                out.append({**_header(image), "detections": [
                    {"class": self.classes[int(lb)], "score": rounded(s), "box": b}
                    for b, s, lb in zip(_boxes_json(boxes, image), scores[keep], labels[keep])]})
        return out

    def draw(self, result: dict, image: LoadedImage) -> Image.Image:
        dets = result["detections"]
        return draw_boxes(image.image, [d["box"] for d in dets], [f"{d['class']} {d['score']:.2f}" for d in dets])


class GroundingPredictor(Predictor):
    """The ``top_k`` best boxes of each phrase of a text.

    ``predict(images, texts, phrases=None)``: ``texts`` one per image (or one string for all);
    ``phrases`` per image a list of phrases of its text (default: the whole text) -> per image
    ``{"image", "width", "height", "text", "phrases": [{"phrase", "boxes", "scores"}, ...]}``.
    """

    task = "ground"

    def __init__(self, model, processor, top_k: int = 1, batch_size: int = 8, bf16: bool = False) -> None:
        super().__init__(model, processor, batch_size, bf16)
        self.top_k = top_k

    @torch.no_grad()
    def predict(self, images: Sequence[ImageLike | LoadedImage], texts: str | Sequence[str],
                phrases: Sequence[Sequence[str]] | None = None) -> list[dict]:
        images = self.open(images)
        texts = per_item(texts, len(images), "texts")
        phrases = [list(p) or [t] for p, t in zip(phrases, texts)] if phrases is not None else [[t] for t in texts]
        out = []
        for batch, batch_texts, batch_phrases in self.batches(images, texts, phrases):
            inputs = self.processor.images(batch)
            tok = self.processor.text(batch_texts)
            length = tok.input_ids.shape[1]
            maps = [self.processor.phrase_map(t, ph, length, off) for t, ph, off in zip(batch_texts, batch_phrases, tok.offsets)]
            device_batch = {"images": inputs.pixels.to(self.device), "input_ids": tok.input_ids.to(self.device),
                            "attention_mask": tok.attention_mask.to(self.device),
                            "image_sizes": torch.tensor(inputs.input_sizes)}
            with self.autocast():
                ranked = rank_phrase_boxes(self.model, device_batch, maps, top_k=self.top_k)
            for image, size, text, names, per_phrase in zip(batch, inputs.input_sizes, batch_texts, batch_phrases, ranked):
                entries = [{"phrase": name, "boxes": _boxes_json(self.processor.to_original(b.float(), size, image), image),
                            "scores": [rounded(s) for s in scores]} for name, (b, scores) in zip(names, per_phrase)]
                out.append({**_header(image), "text": text, "phrases": entries})
        return out

    def draw(self, result: dict, image: LoadedImage) -> Image.Image:
        drawn = [(b, f"{p['phrase']} {s:.2f}") for p in result["phrases"] for b, s in zip(p["boxes"], p["scores"])]
        return draw_boxes(image.image, [d[0] for d in drawn], [d[1] for d in drawn])


class RefexpPredictor(Predictor):
    """The one box a referring expression names (the best box for all its words).

    ``predict(images, expressions)`` -> per image ``{"image", "width", "height", "text", "box",
    "score"}``.
    """

    task = "refexp"

    def __init__(self, model, processor, batch_size: int = 8, bf16: bool = False) -> None:
        super().__init__(model, processor, batch_size, bf16)
        self._grounding = GroundingPredictor(model, self.processor, top_k=1, batch_size=batch_size, bf16=bf16)

    def predict(self, images: Sequence[ImageLike | LoadedImage], expressions: str | Sequence[str]) -> list[dict]:
        out = []
        for r in self._grounding.predict(images, expressions):
            best = r["phrases"][0]
            out.append({k: r[k] for k in ("image", "width", "height", "text")}
                       | {"box": best["boxes"][0], "score": best["scores"][0]})
        return out

    def draw(self, result: dict, image: LoadedImage) -> Image.Image:
        return draw_boxes(image.image, [result["box"]], [f"{result['text']} {result['score']:.2f}"])

"""Batching: pad images and text, build the token-level positive map of the boxes, and turn a
:class:`Batch` into the dict of tensors each task's ``training_step`` reads.

:class:`Collator` makes the :class:`Batch`; the task collators on top of it (:class:`PairCollator`
for image-text pairs, :class:`VqaCollator`, :class:`Nlvr2Collator`, :class:`FineCollator` for the
detector) keep tensors only, so that the engine can move the batch to any device. With a cache of
image prefixes (:class:`fibervl.tasks.prefix_cache.ImagePrefixCache`, anything with a
``lookup(paths)``) the first three put ``image_prefix`` in the batch instead of ``images``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol

import torch

from .answers import AnswerVocabulary
from .processor import ProcessedSample
from .samples import Sample, Span
from .tokenizer import Tokenizer


def build_positive_map(offsets: list[tuple[int, int]], tokens_positive: list[list[Span]], length: int) -> torch.Tensor:
    """[N, length] float32: entry (i, j) is 1 when token j's character span overlaps a span of
    box i. Special and padding tokens (offset (0, 0)) are never positive. Rows are not
    normalised (see :func:`normalize_positive_map`)."""
    pm = torch.zeros((len(tokens_positive), length), dtype=torch.float32)
    for i, spans in enumerate(tokens_positive):
        for j, (s, e) in enumerate(offsets[:length]):
            if e <= s:
                continue
            if any(s < b and e > a for a, b in spans):
                pm[i, j] = 1.0
    return pm


def normalize_positive_map(pm: torch.Tensor) -> torch.Tensor:
    """Rows summing to 1 (MDETR / GLIP soft targets); all-zero rows stay zero."""
    return pm / pm.sum(-1, keepdim=True).clamp(min=1e-6)


@dataclass
class Batch:
    """A collated batch; B samples, L tokens, images padded to H x W (bottom/right).

    pixel_values:   [B, 3, H, W] float32 (padding is 0); None for text-only samples.
    pixel_mask:     [B, H, W] bool, True on real pixels (None likewise).
    image_sizes:    [B, 2] int64 (h, w) of each image before padding (None likewise).
    input_ids:      [B, L] int64; attention_mask: [B, L] int64.
    pixel_values2 / pixel_mask2: NLVR2 right images, or None.
    boxes:          B tensors [N_i, 4] float32 xyxy pixels in the padded frame.
    category_ids:   B tensors [N_i] int64.
    positive_maps:  B tensors [N_i, L] float32 0/1 (boxes whose words were truncated away
                    have been removed, with their category ids; ``dropped_boxes`` counts them).
    labels:         [B] int64 NLVR2 truth (1 = True), or None.
    answers:        B lists of annotator answers; texts: B strings; samples: the Samples.

    To map predictions back to the original image: ``samples[i].width/height`` is the image
    as loaded, ``image_sizes[i]`` the size after the transforms (a resize scales by their ratio).
    """

    pixel_values: torch.Tensor | None
    pixel_mask: torch.Tensor | None
    image_sizes: torch.Tensor | None
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    offsets: list[list[tuple[int, int]]]
    boxes: list[torch.Tensor]
    category_ids: list[torch.Tensor]
    positive_maps: list[torch.Tensor]
    texts: list[str]
    answers: list[list[str]]
    samples: list[Sample]
    labels: torch.Tensor | None = None
    pixel_values2: torch.Tensor | None = None
    pixel_mask2: torch.Tensor | None = None
    dropped_boxes: int = 0
    skipped: int = 0
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def sample_ids(self) -> list[str]:
        """The samples' ids, in batch order (the trainer names them when it skips a step)."""
        return [s.sample_id for s in self.samples]


def pad_images(images: list[torch.Tensor], size_divisibility: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """[3, h_i, w_i] tensors -> ([B, 3, H, W], [B, H, W] bool mask); H, W rounded up to a
    multiple of ``size_divisibility`` (32 for the detector's strides)."""
    h = max(t.shape[1] for t in images)
    w = max(t.shape[2] for t in images)
    if size_divisibility > 1:
        h = -(-h // size_divisibility) * size_divisibility
        w = -(-w // size_divisibility) * size_divisibility
    out = torch.zeros((len(images), 3, h, w), dtype=images[0].dtype)
    mask = torch.zeros((len(images), h, w), dtype=torch.bool)
    for i, t in enumerate(images):
        out[i, :, : t.shape[1], : t.shape[2]] = t
        mask[i, : t.shape[1], : t.shape[2]] = True
    return out, mask


class Collator:
    """``DataLoader(..., collate_fn=Collator(tokenizer, max_length=40))``.

    padding: "longest" (default) or "max_length" (e.g. detection queries padded to 256).
    Nones in the list (samples a skipping Processor rejected) are dropped and counted.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int = 40, padding: str = "longest",
                 size_divisibility: int = 1):
        self.tokenizer, self.max_length, self.padding = tokenizer, max_length, padding
        self.size_divisibility = size_divisibility

    def __call__(self, items: list[ProcessedSample | None]) -> Batch:
        kept = [it for it in items if it is not None]
        if not kept:
            raise ValueError(f"all {len(items)} samples of the batch were skipped as bad input")
        samples = [it.sample for it in kept]
        tok = self.tokenizer([s.text for s in samples], max_length=self.max_length, padding=self.padding)
        with_pixels = [it.pixel_values is not None for it in kept]
        if not all(with_pixels):
            if any(with_pixels):
                raise ValueError("a batch mixes samples with and without pixels")
            # text-only samples (training on cached image prefixes): the task finds the images by path
            pixel_values = pixel_mask = sizes = None
        else:
            pixel_values, pixel_mask = pad_images([it.pixel_values for it in kept], self.size_divisibility)
            sizes = torch.tensor([[it.pixel_values.shape[1], it.pixel_values.shape[2]] for it in kept], dtype=torch.int64)
        pv2 = pm2 = None
        if any(it.pixel_values2 is not None for it in kept):
            if not all(it.pixel_values2 is not None for it in kept):
                raise ValueError("a batch mixes pair samples (NLVR2) with single-image samples")
            pv2, pm2 = pad_images([it.pixel_values2 for it in kept], self.size_divisibility)
        boxes, cats, pmaps, dropped = [], [], [], 0
        length = tok.input_ids.shape[1]
        for s, offsets in zip(samples, tok.offsets):
            if s.tokens_positive:
                pm = build_positive_map(offsets, s.tokens_positive, length)
                has_tokens = pm.sum(-1) > 0
                dropped += int((~has_tokens).sum())
                boxes.append(s.boxes[has_tokens])
                cats.append(s.category_ids[has_tokens])
                pmaps.append(pm[has_tokens])
            else:
                boxes.append(s.boxes)
                cats.append(s.category_ids)
                pmaps.append(torch.zeros((s.num_boxes, length), dtype=torch.float32))
        labels = None
        if any(s.label is not None for s in samples):
            labels = torch.tensor([int(bool(s.label)) for s in samples], dtype=torch.int64)
        return Batch(
            pixel_values=pixel_values, pixel_mask=pixel_mask, image_sizes=sizes,
            input_ids=tok.input_ids, attention_mask=tok.attention_mask, offsets=tok.offsets,
            boxes=boxes, category_ids=cats, positive_maps=pmaps, texts=[s.text for s in samples],
            answers=[s.answers for s in samples], samples=samples, labels=labels,
            pixel_values2=pv2, pixel_mask2=pm2, dropped_boxes=dropped, skipped=len(items) - len(kept),
        )


# ---------------------------------------------------------------------- task batches
class PrefixLookup(Protocol):
    """Image files -> their cached image prefixes ``[B, Hs, Ws, Cs]`` (see
    :class:`fibervl.tasks.prefix_cache.ImagePrefixCache`, which computes them with the model)."""

    def lookup(self, paths: Iterable[Path | str | None]) -> torch.Tensor: ...


def image_inputs(batch: Batch, prefix_cache: PrefixLookup | None) -> dict[str, torch.Tensor]:
    """A collated batch's image inputs for a fused task: ``images`` (and NLVR2's ``images2``)
    [B, 3, S, S], or with a cache ``image_prefix`` (and ``image2_prefix``) [B, Hs, Ws, Cs] looked
    up by the samples' image files."""
    if prefix_cache is None:
        out = {"images": batch.pixel_values}
        if batch.pixel_values2 is not None:
            out["images2"] = batch.pixel_values2
        return out
    out = {"image_prefix": prefix_cache.lookup(s.image_path for s in batch.samples)}
    if any(s.image2_path is not None for s in batch.samples):
        out["image2_prefix"] = prefix_cache.lookup(s.image2_path for s in batch.samples)
    return out


def stable_id(value) -> int:
    """An int for any image id, equal on every process (Python's str hash is salted per process)."""
    return value if isinstance(value, int) else zlib.crc32(str(value).encode())


class PairCollator:
    """ProcessedSamples -> the dict the image-text tasks take (pre-training, retrieval,
    captioning): images [B, 3, H, W] (with ``prefix_cache``: ``image_prefix`` [B, Hs, Ws, Cs]
    instead), input_ids / attention_mask [B, T], image_ids [B] (:func:`stable_id`)."""

    def __init__(self, tokenizer: Tokenizer, max_length: int, prefix_cache: PrefixLookup | None = None) -> None:
        self.collate = Collator(tokenizer, max_length=max_length)
        self.prefix_cache = prefix_cache

    def __call__(self, items) -> dict[str, torch.Tensor]:
        batch = self.collate(items)
        return {
            **image_inputs(batch, self.prefix_cache),
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "image_ids": torch.tensor([stable_id(s.image_id) for s in batch.samples], dtype=torch.long),
        }


class VqaCollator:
    """ProcessedSamples -> ``images [B, 3, S, S]`` (with ``prefix_cache``: ``image_prefix``
    [B, Hs, Ws, Cs] instead), ``input_ids`` / ``attention_mask [B, L]``, ``targets [B, N]`` soft
    scores and ``in_vocab [B]`` (bool: some annotator answer is in the vocabulary; questions
    without one train towards "no answer" and are counted)."""

    def __init__(self, tokenizer: Tokenizer, max_length: int, vocab: AnswerVocabulary,
                 prefix_cache: PrefixLookup | None = None) -> None:
        self.collate = Collator(tokenizer, max_length=max_length)
        self.vocab = vocab
        self.prefix_cache = prefix_cache

    def __call__(self, items) -> dict[str, torch.Tensor]:
        batch = self.collate(items)
        targets = self.vocab.batch_targets(batch.answers)
        return {**image_inputs(batch, self.prefix_cache), "input_ids": batch.input_ids,
                "attention_mask": batch.attention_mask, "targets": targets, "in_vocab": targets.sum(1) > 0}


class Nlvr2Collator:
    """ProcessedSamples (pairs) -> ``images`` / ``images2 [B, 3, S, S]`` (left / right; with
    ``prefix_cache``: ``image_prefix`` / ``image2_prefix`` [B, Hs, Ws, Cs]), ``input_ids`` /
    ``attention_mask [B, L]``, ``labels [B]`` (1 = True)."""

    def __init__(self, tokenizer: Tokenizer, max_length: int, prefix_cache: PrefixLookup | None = None) -> None:
        self.collate = Collator(tokenizer, max_length=max_length)
        self.prefix_cache = prefix_cache

    def __call__(self, items) -> dict[str, torch.Tensor]:
        b = self.collate(items)
        images = image_inputs(b, self.prefix_cache)
        if len(images) != 2 or b.labels is None:
            raise ValueError("NLVR2 batches need image pairs and labels (samples from an Nlvr2Reader)")
        return {**images, "input_ids": b.input_ids, "attention_mask": b.attention_mask, "labels": b.labels}


# The detector's strides go to 32 on the backbone (128 for P7, which pads itself): its batches are
# padded to a multiple of 32 so every level's grid is whole.
SIZE_DIVISIBILITY = 32


class FineCollator:
    """ProcessedSamples -> dict of tensors for the detector (fine-grained pre-training, grounding,
    REC, detection): images ``[B, 3, H, W]`` (padded to a multiple of :data:`SIZE_DIVISIBILITY`),
    input_ids / attention_mask ``[B, T]``, image_sizes ``[B, 2]`` (h, w before padding), boxes:
    B ``[N_i, 4]`` xyxy, positive_maps: B ``[N_i, T]`` 0/1."""

    def __init__(self, tokenizer: Tokenizer, max_length: int) -> None:
        self.collate = Collator(tokenizer, max_length=max_length, size_divisibility=SIZE_DIVISIBILITY)

    def __call__(self, items) -> dict:
        batch = self.collate(items)
        return {
            "images": batch.pixel_values, "input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
            "image_sizes": batch.image_sizes, "boxes": batch.boxes, "positive_maps": batch.positive_maps,
        }

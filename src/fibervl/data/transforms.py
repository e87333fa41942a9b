"""Image transforms that keep boxes and text consistent (plain PyTorch + PIL).

Every transform is called as ``image, sample = t(image, sample)`` with a PIL RGB image and a
:class:`~fibervl.data.samples.Sample` whose ``boxes`` ([N, 4] xyxy pixels) refer to that
image. Transforms return a new Sample (``dataclasses.replace``) and never change their input.
Randomness comes from ``torch``'s generator, so DataLoader worker seeding applies.

:func:`to_tensor` and :class:`Normalize` end a pipeline: they give a [3, H, W] float tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from PIL import Image, ImageEnhance

from ..boxes import box_area, clip_boxes_to_image
from .samples import Sample
from .text_ops import remap_span, swap_answer_left_right, swap_left_right

Transform = Callable[[Image.Image, Sample], tuple[Image.Image, Sample]]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _rand() -> float:
    return float(torch.rand(()))


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * _rand()


class Compose:
    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, image, sample):
        for t in self.transforms:
            image, sample = t(image, sample)
        return image, sample

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


def _scale_boxes(sample: Sample, sx: float, sy: float) -> Sample:
    if sample.num_boxes == 0:
        return sample
    scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
    return replace(sample, boxes=sample.boxes * scale)


def resize_to(image: Image.Image, sample: Sample, width: int, height: int) -> tuple[Image.Image, Sample]:
    """Resize to exactly (width, height) with bicubic filtering; boxes follow."""
    if image.size == (width, height):
        return image, sample
    sx, sy = width / image.width, height / image.height
    return image.resize((width, height), Image.BICUBIC), _scale_boxes(sample, sx, sy)


class Resize:
    """``Resize(384)``: a 384x384 square (FIBER's coarse-grained input).
    ``Resize(800, max_size=1333, keep_ratio=True)``: shorter side 800, longer at most 1333."""

    def __init__(self, size: int | tuple[int, int], keep_ratio: bool = False, max_size: int | None = None):
        self.size, self.keep_ratio, self.max_size = size, keep_ratio, max_size

    def target_size(self, w: int, h: int) -> tuple[int, int]:
        if not self.keep_ratio:
            if isinstance(self.size, int):
                return self.size, self.size
            return self.size[1], self.size[0]  # size is (h, w)
        short = self.size if isinstance(self.size, int) else min(self.size)
        scale = short / min(w, h)
        if self.max_size is not None and max(w, h) * scale > self.max_size:
            scale = self.max_size / max(w, h)
        return max(1, round(w * scale)), max(1, round(h * scale))

    def __call__(self, image, sample):
        return resize_to(image, sample, *self.target_size(image.width, image.height))

    def __repr__(self) -> str:
        return f"Resize({self.size}, keep_ratio={self.keep_ratio}, max_size={self.max_size})"


class RandomMultiScaleResize:
    """Detection-style multi-scale training: shorter side drawn from ``sizes``, longer side
    capped at ``max_size`` (FIBER fine-grained: 480..800 by 32, max 1333)."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None):
        if not sizes:
            raise ValueError("sizes must not be empty")
        self.sizes, self.max_size = list(sizes), max_size

    def __call__(self, image, sample):
        size = self.sizes[int(torch.randint(len(self.sizes), ()))]
        return Resize(size, keep_ratio=True, max_size=self.max_size)(image, sample)


def crop(image: Image.Image, sample: Sample, left: int, top: int, width: int, height: int,
         min_visible: float = 0.0) -> tuple[Image.Image, Sample]:
    """Crop to the rectangle; boxes are shifted and clipped, and a box keeping less than
    ``min_visible`` of its area (or none) is dropped with its tokens_positive."""
    image = image.crop((left, top, left + width, top + height))
    if sample.num_boxes == 0:
        return image, sample
    shifted = sample.boxes - torch.tensor([left, top, left, top], dtype=torch.float32)
    clipped = clip_boxes_to_image(shifted, (height, width))
    before = box_area(sample.boxes).clamp(min=1e-9)
    after = box_area(clipped)
    keep = (after > 0) & (after / before >= min_visible)
    idx = keep.nonzero().flatten().tolist()
    return image, replace(
        sample, boxes=clipped[keep], category_ids=sample.category_ids[keep],
        tokens_positive=[sample.tokens_positive[i] for i in idx] if sample.tokens_positive else [],
    )


class RandomResizedCrop:
    """Crop a random region (area fraction in ``scale``, aspect in ``ratio``), then resize to
    ``size`` x ``size``.

    keep_all_boxes: when the sample has boxes (grounding, referring), only crops that keep
    every box whole are accepted: dropping the target of "the red star on the left" would
    make the text false. After ``attempts`` misses the whole image is used.
    """

    def __init__(self, size: int, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), keep_all_boxes: bool = True,
                 attempts: int = 10):
        self.size, self.scale, self.ratio = size, scale, ratio
        self.keep_all_boxes, self.attempts = keep_all_boxes, attempts

    def _sample_window(self, w, h):
        area = w * h
        for _ in range(self.attempts):
            target = area * _uniform(*self.scale)
            aspect = math.exp(_uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                yield int(torch.randint(w - cw + 1, ())), int(torch.randint(h - ch + 1, ())), cw, ch

    def __call__(self, image, sample):
        w, h = image.size
        for left, top, cw, ch in self._sample_window(w, h):
            if self.keep_all_boxes and sample.num_boxes:
                b = sample.boxes
                inside = (b[:, 0] >= left) & (b[:, 1] >= top) & (b[:, 2] <= left + cw) & (b[:, 3] <= top + ch)
                if not bool(inside.all()):
                    continue
            image, sample = crop(image, sample, left, top, cw, ch)
            break
        return resize_to(image, sample, self.size, self.size)


class RandomHorizontalFlip:
    """Mirror the image and boxes with probability ``p``. With ``swap_left_right`` the words
    left/right (and leftmost/rightmost) are swapped in the text and the answers, and
    tokens_positive spans are moved to follow the edited words, so "the star on the left"
    stays true. Do not use on NLVR2 pairs, where "left image" names the pair's first image.
    """

    def __init__(self, p: float = 0.5, swap_left_right: bool = True):
        self.p, self.swap = p, swap_left_right

    def __call__(self, image, sample):
        if _rand() >= self.p:
            return image, sample
        return hflip(image, sample, self.swap)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p}, swap_left_right={self.swap})"


def hflip(image: Image.Image, sample: Sample, swap_words: bool = True) -> tuple[Image.Image, Sample]:
    """Deterministic flip (see :class:`RandomHorizontalFlip`)."""
    image = image.transpose(Image.FLIP_LEFT_RIGHT)
    changes = {}
    if sample.num_boxes:
        b = sample.boxes
        changes["boxes"] = torch.stack([image.width - b[:, 2], b[:, 1], image.width - b[:, 0], b[:, 3]], dim=1)
    if swap_words:
        text, edits = swap_left_right(sample.text)
        if edits:
            changes["text"] = text
            changes["tokens_positive"] = [[remap_span(s, edits) for s in spans] for spans in sample.tokens_positive]
            changes["captions"] = [swap_left_right(c)[0] for c in sample.captions]
        changes["answers"] = [swap_answer_left_right(a) for a in sample.answers]
        changes["meta"] = {**sample.meta, **({"multiple_choice_answer": swap_answer_left_right(sample.meta["multiple_choice_answer"])}
                                             if "multiple_choice_answer" in sample.meta else {})}
    return image, replace(sample, **changes)


class ColorJitter:
    """Light brightness / contrast / saturation jitter, factors in [1 - x, 1 + x].

    No hue jitter on purpose: colour names are labels here ("the red star"); a hue shift
    would turn red into orange and make the text false.
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2):
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def __call__(self, image, sample):
        ops = [(ImageEnhance.Brightness, self.brightness), (ImageEnhance.Contrast, self.contrast),
               (ImageEnhance.Color, self.saturation)]
        order = torch.randperm(len(ops)).tolist()
        for i in order:
            enhancer, amount = ops[i]
            if amount > 0:
                image = enhancer(image).enhance(_uniform(1 - amount, 1 + amount))
        return image, sample


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> [3, H, W] float32 in [0, 1]."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode}")
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(image.height, image.width, 3).permute(2, 0, 1).float().div_(255.0)


class Normalize:
    """(x - mean) / std per channel on a [3, H, W] tensor in [0, 1]."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return (tensor - self.mean) / self.std


def train_transforms(image_size: int, flip: bool = True, crop_scale: tuple[float, float] | None = None) -> Compose:
    """Coarse-grained training pipeline: resize (or random resized crop), flip with word
    swapping, light colour jitter.

    No crop by default: a caption or question about the whole image ("five shapes", "how many
    stars?") turns false when a crop cuts an object away, and only grounding samples carry the
    boxes that let a crop check for that. Pass ``crop_scale=(0.5, 1.0)`` for photo captions.
    Leave ``flip`` off for NLVR2.
    """
    steps: list[Transform] = [RandomResizedCrop(image_size, scale=crop_scale) if crop_scale else Resize(image_size)]
    if flip:
        steps.append(RandomHorizontalFlip(0.5, swap_left_right=True))
    steps.append(ColorJitter())
    return Compose(steps)


def eval_transforms(image_size: int) -> Compose:
    return Compose([Resize(image_size)])


def detection_train_transforms(sizes: Sequence[int], max_size: int, flip: bool = True) -> Compose:
    steps: list[Transform] = []
    if flip:
        steps.append(RandomHorizontalFlip(0.5, swap_left_right=True))
    steps.append(RandomMultiScaleResize(sizes, max_size))
    return Compose(steps)


@dataclass(frozen=True)
class InputSize:
    """A detector's input: shorter side ``min_size``, longer side at most ``max_size``, aspect
    ratio kept (FIBER / GLIP: 800 and 1333); training draws the shorter side from ``train_sizes``
    (empty: ``min_size`` alone). ``InputSize.square(128)`` leaves a 128 x 128 image as it is and
    fits any other into 128 x 128 without distorting it."""

    min_size: int
    max_size: int
    train_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.min_size < 1 or self.max_size < self.min_size or any(s < 1 for s in self.train_sizes):
            raise ValueError(f"bad input size: min_size={self.min_size}, max_size={self.max_size}, "
                             f"train_sizes={self.train_sizes} (need 1 <= min_size <= max_size)")

    @classmethod
    def square(cls, size: int) -> "InputSize":
        return cls(size, size)

    @classmethod
    def of(cls, size: "int | InputSize") -> "InputSize":
        """An InputSize as it is; an int ``n`` as :meth:`square` (``n``)."""
        return size if isinstance(size, InputSize) else cls.square(int(size))

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """(h, w) an image of ``width`` x ``height`` is evaluated at."""
        w, h = Resize(self.min_size, keep_ratio=True, max_size=self.max_size).target_size(width, height)
        return h, w

    def eval_transforms(self) -> Compose:
        return Compose([Resize(self.min_size, keep_ratio=True, max_size=self.max_size)])

    def train_transforms(self, flip: bool = True) -> Compose:
        return detection_train_transforms(self.train_sizes or (self.min_size,), self.max_size, flip)

"""Box geometry for ``[N, 4]`` boxes: the one module that the data pipeline, the detector, the
metrics and the baselines all use (it imports nothing of fibervl, so every layer may import it).

``xyxy`` boxes are ``(x1, y1, x2, y2)``. Functions that measure width/height take ``pixel_offset``:
``0.0`` is the continuous convention (width = x2 - x1); ``1.0`` is the legacy maskrcnn_benchmark
convention that the official FIBER detector uses everywhere except the GIoU loss (width =
x2 - x1 + 1, i.e. x2 is the last pixel inside the box). :data:`LEGACY_PIXEL_OFFSET` names the latter.

Empty boxes: a pair of boxes whose union has no area (two zero-width or zero-height boxes) has
IoU 0 and GIoU 0, never NaN, so that a degenerate annotation or prediction counts as a miss
instead of poisoning a mean or an arg-max. The training loss of the detector has its own GIoU
with the official epsilons (:func:`fibervl.modeling.detection.losses.giou_loss`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "LEGACY_PIXEL_OFFSET",
    "check_boxes",
    "box_xyxy_to_cxcywh",
    "box_cxcywh_to_xyxy",
    "box_area",
    "inter_union",
    "box_iou",
    "generalized_box_iou",
    "clip_boxes_to_image",
    "remove_small_boxes",
]

LEGACY_PIXEL_OFFSET = 1.0


def check_boxes(boxes: Tensor, name: str = "boxes", pixel_offset: float = 0.0) -> None:
    """Raise ``ValueError`` unless ``boxes`` is ``[N, 4]`` xyxy with non-negative width and height.

    Width and height are ``x2 - x1 + pixel_offset`` and ``y2 - y1 + pixel_offset``.
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [N, 4], got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {boxes.dtype}")
    if boxes.numel():
        wh = boxes[:, 2:] - boxes[:, :2] + pixel_offset
        bad = (wh < 0).any(dim=1) | ~torch.isfinite(boxes).all(dim=1)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(
                f"{name}[{i}] = {boxes[i].tolist()} has negative width/height or a non-finite value "
                f"(xyxy expected, pixel_offset={pixel_offset})"
            )


def check_box_lists(boxes: Sequence[Tensor], name: str = "boxes[{}]", pixel_offset: float = 0.0) -> None:
    """:func:`check_boxes` for each of ``boxes`` (the i-th named ``name.format(i)``), tested in one
    pass: a batch is checked at every training step, and most batches are valid."""
    if all(b.dim() == 2 and b.shape[-1] == 4 and b.is_floating_point() for b in boxes):
        together = torch.cat([b.to(boxes[0].dtype) for b in boxes]) if len(boxes) else None
        if together is None or not together.numel():
            return
        wh = together[:, 2:] - together[:, :2] + pixel_offset
        if not ((wh < 0).any() | ~torch.isfinite(together).all()):
            return
    for i, b in enumerate(boxes):  # some box is wrong: find it, to name it
        check_boxes(b, name.format(i), pixel_offset)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``[..., 4]`` (x1, y1, x2, y2) -> (cx, cy, w, h), continuous convention."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``[..., 4]`` (cx, cy, w, h) -> (x1, y1, x2, y2), continuous convention."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def box_area(boxes: Tensor, pixel_offset: float = 0.0) -> Tensor:
    """``[N, 4]`` -> ``[N]`` areas ``(x2 - x1 + o) * (y2 - y1 + o)``, 0 for a box turned inside out."""
    width = (boxes[:, 2] - boxes[:, 0] + pixel_offset).clamp(min=0)
    return width * (boxes[:, 3] - boxes[:, 1] + pixel_offset).clamp(min=0)


def inter_union(boxes1: Tensor, boxes2: Tensor, pixel_offset: float = 0.0) -> tuple[Tensor, Tensor]:
    """Pairwise intersection and union areas of ``[N, 4]`` x ``[M, 4]`` xyxy boxes: two ``[N, M]``
    (unchecked: callers that take boxes from outside run :func:`check_boxes` first)."""
    area1 = box_area(boxes1, pixel_offset)
    area2 = box_area(boxes2, pixel_offset)
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt + pixel_offset).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter, area1[:, None] + area2[None, :] - inter


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` where ``denominator > 0``, else 0 (the numerators here are 0
    there). Dividing by 1 instead of masking a NaN afterwards keeps the gradient finite."""
    return numerator / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


def box_iou(boxes1: Tensor, boxes2: Tensor, pixel_offset: float = 0.0) -> Tensor:
    """Pairwise IoU: ``[N, 4]`` x ``[M, 4]`` -> ``[N, M]`` in [0, 1]; a pair whose union has no
    area (both boxes empty) gives 0."""
    check_boxes(boxes1, "boxes1", pixel_offset)
    check_boxes(boxes2, "boxes2", pixel_offset)
    inter, union = inter_union(boxes1, boxes2, pixel_offset)
    return _ratio(inter, union)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU (continuous convention): ``[N, 4]`` x ``[M, 4]`` -> ``[N, M]`` in
    [-1, 1]; a pair whose enclosing box has no area (two empty boxes on one line) gives 0."""
    check_boxes(boxes1, "boxes1")
    check_boxes(boxes2, "boxes2")
    inter, union = inter_union(boxes1, boxes2, 0.0)
    iou = _ratio(inter, union)
    lt = torch.minimum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.maximum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - _ratio(enclosing - union, enclosing)


def clip_boxes_to_image(boxes: Tensor, image_size: tuple[int, int], pixel_offset: float = 0.0) -> Tensor:
    """Clamp ``[N, 4]`` xyxy boxes to an image of ``(height, width)``.

    x is clamped to ``[0, width - pixel_offset]`` and y to ``[0, height - pixel_offset]`` (with the
    legacy offset 1 the last pixel index, as the official ``clip_to_image``).
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {tuple(boxes.shape)}")
    height, width = image_size
    x = boxes[:, 0::2].clamp(min=0, max=width - pixel_offset)
    y = boxes[:, 1::2].clamp(min=0, max=height - pixel_offset)
    return torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), dim=1)


def remove_small_boxes(boxes: Tensor, min_size: float, pixel_offset: float = 0.0) -> Tensor:
    """Indices (int64 ``[K]``) of boxes whose width and height (``x2 - x1 + o``) are both ``>= min_size``."""
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {tuple(boxes.shape)}")
    ws = boxes[:, 2] - boxes[:, 0] + pixel_offset
    hs = boxes[:, 3] - boxes[:, 1] + pixel_offset
    return ((ws >= min_size) & (hs >= min_size)).nonzero().squeeze(1)

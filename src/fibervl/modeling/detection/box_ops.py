"""Box utilities for ``[N, 4]`` boxes.

``xyxy`` boxes are ``(x1, y1, x2, y2)``. Functions that measure width/height take ``pixel_offset``:
``0.0`` is the continuous convention (width = x2 - x1); ``1.0`` is the legacy maskrcnn_benchmark
convention that the official FIBER detector uses everywhere except the GIoU loss (width =
x2 - x1 + 1, i.e. x2 is the last pixel inside the box). :data:`LEGACY_PIXEL_OFFSET` names the latter.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "LEGACY_PIXEL_OFFSET",
    "check_boxes",
    "box_xyxy_to_cxcywh",
    "box_cxcywh_to_xyxy",
    "box_area",
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


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``[..., 4]`` (x1, y1, x2, y2) -> (cx, cy, w, h), continuous convention."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``[..., 4]`` (cx, cy, w, h) -> (x1, y1, x2, y2), continuous convention."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def box_area(boxes: Tensor, pixel_offset: float = 0.0) -> Tensor:
    """``[N, 4]`` -> ``[N]`` areas ``(x2 - x1 + o) * (y2 - y1 + o)``."""
    return (boxes[:, 2] - boxes[:, 0] + pixel_offset) * (boxes[:, 3] - boxes[:, 1] + pixel_offset)


def _inter_union(boxes1: Tensor, boxes2: Tensor, pixel_offset: float) -> tuple[Tensor, Tensor]:
    area1 = box_area(boxes1, pixel_offset)
    area2 = box_area(boxes2, pixel_offset)
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt + pixel_offset).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter, area1[:, None] + area2[None, :] - inter


def box_iou(boxes1: Tensor, boxes2: Tensor, pixel_offset: float = 0.0) -> Tensor:
    """Pairwise IoU: ``[N, 4]`` x ``[M, 4]`` -> ``[N, M]``. Degenerate pairs (union 0) give NaN."""
    check_boxes(boxes1, "boxes1", pixel_offset)
    check_boxes(boxes2, "boxes2", pixel_offset)
    inter, union = _inter_union(boxes1, boxes2, pixel_offset)
    return inter / union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU (continuous convention): ``[N, 4]`` x ``[M, 4]`` -> ``[N, M]`` in [-1, 1]."""
    check_boxes(boxes1, "boxes1")
    check_boxes(boxes2, "boxes2")
    inter, union = _inter_union(boxes1, boxes2, 0.0)
    iou = inter / union
    lt = torch.minimum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.maximum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing


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

"""Box conversions and checks in plain PyTorch (torchvision does not import here).

All boxes in samples are [N, 4] float32 xyxy in absolute pixels; COCO files store xywh.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .errors import DataError


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """[N, 4] (x, y, w, h) -> [N, 4] (x0, y0, x1, y1)."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """[N, 4] (x0, y0, x1, y1) -> [N, 4] (x, y, w, h)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([x0, y0, x1 - x0, y1 - y0], dim=-1)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """[N, 4] xyxy -> [N, 4] (cx, cy, w, h)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """[N, 4] xyxy -> [N] area (0 for degenerate boxes)."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, 4], [M, 4] xyxy -> [N, M] IoU."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union.clamp(min=1e-9)


def clip_boxes(boxes: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Clamp xyxy boxes into [0, width] x [0, height]."""
    out = boxes.clone()
    out[:, 0::2] = out[:, 0::2].clamp(0, width)
    out[:, 1::2] = out[:, 1::2].clamp(0, height)
    return out


def checked_xywh_box(
    bbox: object,
    width: int | None,
    height: int | None,
    file: str | Path,
    record: object,
    min_size: float = 1e-3,
) -> list[float]:
    """Validate one COCO ``bbox`` [x, y, w, h] and return it as clipped xyxy.

    Clipped (not an error): a box reaching past the image border.
    DataError: not four finite numbers, negative width or height, or no area left inside
    the image after clipping (e.g. entirely outside).
    """
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise DataError(file, f"bad box: expected [x, y, w, h], got {bbox!r}", record)
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise DataError(file, f"bad box: non-numeric values {bbox!r}", record) from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise DataError(file, f"bad box: non-finite values {bbox!r}", record)
    if w < 0 or h < 0:
        raise DataError(file, f"box with negative size: {bbox!r}", record)
    x0, y0, x1, y1 = x, y, x + w, y + h
    if width is not None and height is not None:
        x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
        y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
    if x1 - x0 < min_size or y1 - y0 < min_size:
        where = f" of the {width}x{height} image" if width is not None else ""
        raise DataError(file, f"box outside the image or empty: {bbox!r} has no area inside{where}", record)
    return [x0, y0, x1, y1]

"""The check of a box record read from an annotation file.

All boxes in samples are [N, 4] float32 xyxy in absolute pixels; COCO files store xywh. The box
geometry (areas, IoU, clipping, conversions) is :mod:`fibervl.boxes`.
"""

from __future__ import annotations

import math
from pathlib import Path

from .errors import DataError


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

"""Non-maximum suppression in plain PyTorch.

Greedy NMS, the same rule as the official (maskrcnn_benchmark) kernels: boxes are visited by
decreasing score; a box is kept unless a kept, higher-scored box has IoU ``> iou_threshold`` with it.

Implementation: the pairwise "suppresses" relation is computed as one boolean matrix (IoU in
cache-sized row chunks with in-place ops), then the greedy scan walks it on the CPU with one O(N)
row OR per *kept* box. Class-wise NMS splits the boxes by label (classes never interact), which
keeps each matrix small and avoids the coordinate-offset trick and its float precision loss.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


__all__ = ["nms", "batched_nms"]

_ROW_CHUNK = 256  # rows of the IoU matrix per step: keeps the temporaries cache-sized


def _suppression_matrix(boxes: Tensor, iou_threshold: float, pixel_offset: float) -> Tensor:
    """``[N, N]`` bool, ``[i, j] = IoU(i, j) > iou_threshold`` (rows in chunks, in-place ops)."""
    x1, y1, x2, y2 = boxes.unbind(1)
    area = (x2 - x1 + pixel_offset) * (y2 - y1 + pixel_offset)
    rows = []
    for s in range(0, boxes.shape[0], _ROW_CHUNK):
        e = s + _ROW_CHUNK
        w = torch.minimum(x2[s:e, None], x2[None]).sub_(torch.maximum(x1[s:e, None], x1[None]))
        w = w.add_(pixel_offset).clamp_(min=0)
        h = torch.minimum(y2[s:e, None], y2[None]).sub_(torch.maximum(y1[s:e, None], y1[None]))
        inter = w.mul_(h.add_(pixel_offset).clamp_(min=0))
        # IoU > t  <=>  inter > t * union (union > 0 for valid boxes); avoids a division
        rows.append(inter > (area[s:e, None] + area[None]).sub_(inter).mul_(iou_threshold))
    return torch.cat(rows)


def _greedy(boxes: Tensor, scores: Tensor, iou_threshold: float, pixel_offset: float) -> Tensor:
    """Kept indices into ``boxes``, by decreasing score (ties: lower index first)."""
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    suppress = _suppression_matrix(boxes[order].float(), iou_threshold, pixel_offset).cpu().numpy()
    removed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        removed |= suppress[i]
    return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]


def _check(boxes: Tensor, scores: Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"scores must have shape [{boxes.shape[0]}], got {tuple(scores.shape)}")


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, pixel_offset: float = 0.0) -> Tensor:
    """Greedy NMS.

    Args:
        boxes: ``[N, 4]`` xyxy.
        scores: ``[N]``.
        iou_threshold: suppress when IoU is strictly greater than this.
        pixel_offset: 0 continuous, 1 legacy (width = x2 - x1 + 1), see :mod:`fibervl.boxes`.

    Returns:
        int64 ``[K]`` indices of kept boxes, by decreasing score (ties: lower index first).
    """
    _check(boxes, scores)
    return _greedy(boxes, scores, iou_threshold, pixel_offset)


def batched_nms(
    boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float, pixel_offset: float = 0.0
) -> Tensor:
    """Class-wise NMS: boxes only suppress boxes with the same label.

    ``boxes [N, 4]``, ``scores [N]``, ``labels [N]`` (integers) -> int64 ``[K]`` kept indices by
    decreasing score.
    """
    _check(boxes, scores)
    if labels.shape != boxes.shape[:1]:
        raise ValueError(f"labels must have shape [{boxes.shape[0]}], got {tuple(labels.shape)}")
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    # Different labels never interact, so each class is an independent (much smaller) problem.
    _, group = torch.unique(labels, return_inverse=True)
    group_order = torch.argsort(group, stable=True)
    counts = torch.bincount(group).tolist()
    kept = []
    start = 0
    for count in counts:
        idx = group_order[start : start + count]
        kept.append(idx[_greedy(boxes[idx], scores[idx], iou_threshold, pixel_offset)])
        start += count
    keep = torch.cat(kept).sort().values
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]

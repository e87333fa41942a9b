"""Non-maximum suppression in plain PyTorch.

Greedy NMS, the same rule as the official (maskrcnn_benchmark) kernels: boxes are visited by
decreasing score; a box is kept unless a kept, higher-scored box has IoU ``> iou_threshold`` with it.

Implementation: the pairwise "suppresses" relation is computed as one boolean matrix (IoU in row
chunks to bound the float memory), then the greedy scan walks it on the CPU: one O(N) row OR per
*kept* box, so thousands of boxes take milliseconds. Class-wise NMS masks the relation with
``label_i == label_j`` (no coordinate shifting, so no float precision is lost for large labels).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .box_ops import _inter_union

__all__ = ["nms", "batched_nms"]

_ROW_CHUNK = 2048


def _greedy(boxes: Tensor, scores: Tensor, labels: Tensor | None, iou_threshold: float, pixel_offset: float) -> Tensor:
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order].float()
    lab = labels[order] if labels is not None else None
    rows = []
    for start in range(0, n, _ROW_CHUNK):
        inter, union = _inter_union(b[start : start + _ROW_CHUNK], b, pixel_offset)
        sup = inter > iou_threshold * union  # IoU > t without dividing (union > 0 for real boxes)
        if lab is not None:
            sup &= lab[start : start + _ROW_CHUNK, None] == lab[None, :]
        rows.append(sup)
    suppress = torch.cat(rows).cpu().numpy()
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
        pixel_offset: 0 continuous, 1 legacy (width = x2 - x1 + 1), see ``box_ops``.

    Returns:
        int64 ``[K]`` indices of kept boxes, by decreasing score (ties: lower index first).
    """
    _check(boxes, scores)
    return _greedy(boxes, scores, None, iou_threshold, pixel_offset)


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
    return _greedy(boxes, scores, labels, iou_threshold, pixel_offset)

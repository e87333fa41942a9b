"""Adaptive training sample selection (ATSS) as the official FIBER/GLIP loss does it.

For each ground-truth box ``g``:

1. on every level, the ``topk`` anchors (``topk x anchors-per-location``; one anchor per location
   here) whose centres are closest (Euclidean) to the box centre become candidates;
2. IoU threshold ``t_g = mean + std`` of the candidates' IoUs with ``g`` (all levels together;
   ``std`` is the unbiased estimate, as ``torch.std``);
3. a candidate is positive when ``IoU >= t_g`` and its centre lies inside ``g`` with every one of
   ``(cx - x1, cy - y1, x2 - cx, y2 - cy)`` greater than 0.01;
4. an anchor positive for several boxes goes to the box with the highest IoU (ties: lowest box index).

IoUs use the legacy pixel convention (``+1`` on widths), like ``boxlist_iou``. Among anchors at equal
distance the one with the lower index wins (stable sort); the official ``topk`` leaves that order
unspecified.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ...boxes import LEGACY_PIXEL_OFFSET, check_boxes, inter_union

__all__ = ["atss_assign"]


def atss_assign(
    anchors_per_level: Sequence[Tensor],
    gt_boxes: Tensor,
    topk: int = 9,
    pixel_offset: float = LEGACY_PIXEL_OFFSET,
) -> tuple[Tensor, Tensor]:
    """Assign anchors to ground-truth boxes.

    Args:
        anchors_per_level: per level ``[A_l, 4]`` xyxy anchors (concatenated in this order).
        gt_boxes: ``[G, 4]`` xyxy ground-truth boxes.
        topk: candidates per level per box.
        pixel_offset: width convention of the IoU (1.0 official).

    Returns:
        ``(matched, ious)``: ``matched [A]`` int64 index of the assigned box, ``-1`` for background;
        ``ious [A, G]`` the anchor/box IoU matrix.
    """
    if len(anchors_per_level) == 0:
        raise ValueError("anchors_per_level is empty")
    for i, a in enumerate(anchors_per_level):
        check_boxes(a, f"anchors_per_level[{i}]", pixel_offset)
    check_boxes(gt_boxes, "gt_boxes", pixel_offset)
    anchors = torch.cat(list(anchors_per_level))
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    gt_boxes = gt_boxes.to(anchors.dtype)
    inter, union = inter_union(anchors, gt_boxes, pixel_offset)
    ious = inter / union  # [A, G]
    matched = torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
    if num_gt == 0:
        return matched, ious

    gt_c = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2.0
    anc_c = (anchors[:, :2] + anchors[:, 2:]) / 2.0
    distances = (anc_c[:, None, :] - gt_c[None, :, :]).pow(2).sum(-1).sqrt()  # [A, G]

    candidates = []
    start = 0
    for level_anchors in anchors_per_level:
        end = start + level_anchors.shape[0]
        k = min(topk, end - start)
        order = torch.sort(distances[start:end], dim=0, stable=True).indices[:k]
        candidates.append(order + start)
        start = end
    cand = torch.cat(candidates)  # [C, G]
    cand_ious = ious.gather(0, cand)
    threshold = cand_ious.mean(0) + cand_ious.std(0)
    is_pos = cand_ious >= threshold[None, :]

    cx = anc_c[cand, 0]
    cy = anc_c[cand, 1]
    ltrb = torch.stack(
        (cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy), dim=0
    )  # [4, C, G]
    is_pos &= ltrb.min(dim=0).values > 0.01

    masked = torch.full_like(ious, -float("inf"))
    gt_idx = torch.arange(num_gt, device=anchors.device).expand_as(cand)
    masked[cand[is_pos], gt_idx[is_pos]] = ious[cand[is_pos], gt_idx[is_pos]]
    best_iou, best_gt = masked.max(dim=1)  # first maximal index on ties
    positive = best_iou != -float("inf")
    matched[positive] = best_gt[positive]
    return matched, ious

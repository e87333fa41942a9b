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

from ...boxes import LEGACY_PIXEL_OFFSET, check_box_lists, check_boxes, inter_union

__all__ = ["atss_assign", "atss_assign_batch"]


def atss_assign(
    anchors_per_level: Sequence[Tensor],
    gt_boxes: Tensor,
    topk: int = 9,
    pixel_offset: float = LEGACY_PIXEL_OFFSET,
) -> tuple[Tensor, Tensor]:
    """Assign anchors to the ground-truth boxes of one image.

    Args:
        anchors_per_level: per level ``[A_l, 4]`` xyxy anchors (concatenated in this order).
        gt_boxes: ``[G, 4]`` xyxy ground-truth boxes.
        topk: candidates per level per box.
        pixel_offset: width convention of the IoU (1.0 official).

    Returns:
        ``(matched, ious)``: ``matched [A]`` int64 index of the assigned box, ``-1`` for background;
        ``ious [A, G]`` the anchor/box IoU matrix.
    """
    anchors = _checked_anchors(anchors_per_level, pixel_offset)
    check_boxes(gt_boxes, "gt_boxes", pixel_offset)
    owner = torch.zeros(gt_boxes.shape[0], dtype=torch.long, device=anchors.device)
    matched, ious = _assign(anchors_per_level, anchors, gt_boxes.to(anchors.dtype), owner, 1, topk, pixel_offset)
    return matched[0], ious


def atss_assign_batch(
    anchors_per_level: Sequence[Tensor],
    gt_boxes: Sequence[Tensor],
    topk: int = 9,
    pixel_offset: float = LEGACY_PIXEL_OFFSET,
    name: str = "gt_boxes[{}]",
) -> Tensor:
    """:func:`atss_assign` for the images of a batch, which share their anchors, in one pass
    (a loss assigns every image at every step; one image at a time that is ~40 small operations
    an image). Equal to assigning each image alone.

    Args:
        anchors_per_level: per level ``[A_l, 4]`` xyxy anchors, the same for every image.
        gt_boxes: per image ``[G_b, 4]`` xyxy ground-truth boxes (``G_b`` may be 0).
        name: how a bad image's boxes are named in the error (``name.format(b)``).

    Returns:
        ``matched [B, A]`` int64: per image and anchor the index of its assigned box among that
        image's boxes, ``-1`` for background.
    """
    anchors = _checked_anchors(anchors_per_level, pixel_offset)
    check_box_lists(gt_boxes, name, pixel_offset)
    if len(gt_boxes) == 0:
        return torch.empty(0, anchors.shape[0], dtype=torch.long, device=anchors.device)
    counts = torch.tensor([len(boxes) for boxes in gt_boxes], device=anchors.device)
    owner = torch.repeat_interleave(torch.arange(len(gt_boxes), device=anchors.device), counts)
    boxes = torch.cat([boxes.to(anchors) for boxes in gt_boxes])
    return _assign(anchors_per_level, anchors, boxes, owner, len(gt_boxes), topk, pixel_offset)[0]


def _checked_anchors(anchors_per_level: Sequence[Tensor], pixel_offset: float) -> Tensor:
    if len(anchors_per_level) == 0:
        raise ValueError("anchors_per_level is empty")
    check_box_lists(anchors_per_level, "anchors_per_level[{}]", pixel_offset)
    return torch.cat(list(anchors_per_level))


def _assign(anchors_per_level: Sequence[Tensor], anchors: Tensor, boxes: Tensor, owner: Tensor, num_images: int,
            topk: int, pixel_offset: float) -> tuple[Tensor, Tensor]:
    """Steps 1-3 of the module's rule for each box of ``boxes [N, 4]`` at once (they involve no
    other box), step 4 among the boxes of the same image (``owner [N]``, sorted). Returns
    ``(matched [num_images, A], ious [A, N])``."""
    num_anchors, num_boxes = anchors.shape[0], boxes.shape[0]
    inter, union = inter_union(anchors, boxes, pixel_offset)
    ious = inter / union  # [A, N]
    matched = torch.full((num_images, num_anchors), -1, dtype=torch.long, device=anchors.device)
    if num_boxes == 0:
        return matched, ious

    gt_c = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    anc_c = (anchors[:, :2] + anchors[:, 2:]) / 2.0
    distances = (anc_c[:, None, :] - gt_c[None, :, :]).pow(2).sum(-1).sqrt()  # [A, N]

    candidates = []
    start = 0
    for level_anchors in anchors_per_level:
        end = start + level_anchors.shape[0]
        k = min(topk, end - start)
        order = torch.sort(distances[start:end], dim=0, stable=True).indices[:k]
        candidates.append(order + start)
        start = end
    cand = torch.cat(candidates)  # [C, N]
    cand_ious = ious.gather(0, cand)
    threshold = cand_ious.mean(0) + cand_ious.std(0)
    is_pos = cand_ious >= threshold[None, :]

    cx = anc_c[cand, 0]
    cy = anc_c[cand, 1]
    ltrb = torch.stack((cx - boxes[:, 0], cy - boxes[:, 1], boxes[:, 2] - cx, boxes[:, 3] - cy), dim=0)  # [4, C, N]
    is_pos &= ltrb.min(dim=0).values > 0.01

    # Step 4 on a [A, images, most boxes of an image] layout: each image's boxes in their own slots.
    first = torch.searchsorted(owner, torch.arange(num_images, device=owner.device))
    slot = torch.arange(num_boxes, device=owner.device) - first[owner]
    width = int(slot.max()) + 1
    box_idx = torch.arange(num_boxes, device=anchors.device).expand_as(cand)
    masked = torch.full((num_anchors, num_images * width), -float("inf"), dtype=ious.dtype, device=anchors.device)
    column = owner * width + slot
    masked[cand[is_pos], column[box_idx[is_pos]]] = ious[cand[is_pos], box_idx[is_pos]]
    best_iou, best_slot = masked.view(num_anchors, num_images, width).max(dim=2)  # first maximal index on ties
    positive = best_iou != -float("inf")
    matched[positive.t()] = best_slot.t()[positive.t()]
    return matched, ious

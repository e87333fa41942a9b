"""Box-level metrics of phrase grounding and referring expressions.

* Phrase grounding (Flickr30k Entities protocol, as in MDETR / GLIP / FIBER): each phrase has one
  or more ground-truth boxes and a ranked list of predicted boxes; it counts as found at ``k`` when
  one of the top ``k`` predictions overlaps its ground truth with IoU >= 0.5. Two protocols
  (MDETR's ``flickr_eval``): **any-box**, a hit on any one of the phrase's boxes (the
  ``separateGT`` annotations), and **merged-box**, a hit on the union box of all of them (what
  the ``mergedGT`` annotations hold: one box per phrase). A phrase with one box scores alike in both.
* Referring expression comprehension: the top-1 box is correct at IoU >= 0.5 with the target,
  reported per split (RefCOCO testA, RefCOCOg test, ...: :func:`refexp_split`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..boxes import box_iou

__all__ = ["GROUNDING_PROTOCOLS", "grounding_recall", "rec_accuracy", "union_box", "refexp_split"]

GROUNDING_PROTOCOLS = ("any", "merged", "both")


def union_box(boxes: Tensor) -> Tensor:
    """``[G, 4]`` xyxy -> ``[1, 4]``: the smallest box holding all of them (MDETR ``_merge_boxes``)."""
    if boxes.numel() == 0:
        raise ValueError("no box to merge")
    return torch.cat([boxes[:, :2].min(0).values, boxes[:, 2:].max(0).values])[None]


def grounding_recall(
    ranked_predictions: Sequence[Tensor], gt_boxes: Sequence[Tensor], ks: Sequence[int] = (1, 5, 10),
    iou_threshold: float = 0.5, merge_boxes: bool = False,
) -> dict[str, float]:
    """Recall@k in percent over phrases.

    Args:
        ranked_predictions: per phrase ``[P_i, 4]`` xyxy, best first (``P_i`` may be 0 or < k).
        gt_boxes: per phrase ``[G_i, 4]`` xyxy (``G_i >= 1``).
        merge_boxes: False: any-box protocol; True: merged-box (each phrase's boxes replaced by
            their union box).
    Returns ``{"r1": .., "r5": .., "r10": .., "phrases": N}`` (keys follow ``ks``).
    """
    if len(ranked_predictions) != len(gt_boxes):
        raise ValueError(f"{len(ranked_predictions)} prediction lists for {len(gt_boxes)} phrases")
    hits = torch.zeros(len(ks))
    for i, (pred, gt) in enumerate(zip(ranked_predictions, gt_boxes)):
        if gt.numel() == 0:
            raise ValueError(f"phrase {i} has no ground-truth box")
        if pred.numel() == 0:
            continue
        if merge_boxes:
            gt = union_box(gt)
        # first rank at which any ground-truth box is hit
        hit = (box_iou(pred.float(), gt.float()) >= iou_threshold).any(dim=1)
        if hit.any():
            first = int(hit.nonzero()[0])
            hits += torch.tensor([float(first < k) for k in ks])
    n = max(len(gt_boxes), 1)
    out = {f"r{k}": float(100.0 * h / n) for k, h in zip(ks, hits)}
    out["phrases"] = len(gt_boxes)
    return out


def rec_accuracy(top1: Tensor, targets: Tensor, iou_threshold: float = 0.5) -> dict[str, float]:
    """Accuracy in percent of ``top1 [N, 4]`` against ``targets [N, 4]`` (xyxy, paired)."""
    if top1.shape != targets.shape or top1.dim() != 2 or top1.shape[-1] != 4:
        raise ValueError(f"top1 and targets must be equal [N, 4], got {tuple(top1.shape)}, {tuple(targets.shape)}")
    if top1.shape[0] == 0:
        return {"acc": 0.0, "expressions": 0}
    iou = box_iou(top1.float(), targets.float()).diagonal()
    return {"acc": float(100.0 * (iou >= iou_threshold).float().mean()), "expressions": int(top1.shape[0])}


def refexp_split(path: str | Path) -> str:
    """The RefCOCO / RefCOCO+ / RefCOCOg split an MDETR file holds, from its name:
    ``final_refcoco+_testA.json`` -> ``"refcoco+_testA"``, ``finetune_refcocog_val.json`` ->
    ``"refcocog_val"``; "" for any other name."""
    m = re.fullmatch(r"(?:final|finetune)_(refcoco[+g]?)_([A-Za-z0-9]+)", Path(path).stem)
    return f"{m.group(1)}_{m.group(2)}" if m else ""

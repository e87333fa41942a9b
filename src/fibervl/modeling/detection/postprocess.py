"""Inference post-processing of the official fine-grained FIBER head (``ATSSPostProcessor``, test mode).

Per level and image:

1. token probabilities ``sigmoid(logits) [A, T]``; class score = **mean** of the probabilities of the
   class's tokens (``SCORE_AGG "MEAN"``), via a positive map ``[K, T]``; with ``class_scores
   "exclusive"`` (not official) those scores are then shared out among the named classes
   (:func:`exclusive_class_scores`);
2. candidates: class score ``> pre_nms_thresh`` (0.05) — tested *before* centerness;
3. ranking score ``cls * sigmoid(centerness)``; the best ``min(#candidates, pre_nms_top_n)`` (1000)
   (anchor, class) pairs are kept;
4. boxes decoded from the anchor, clipped to the image (legacy: to ``[0, width - 1]``), small boxes
   removed (``min_size`` 0 keeps all); reported score ``sqrt(cls * centerness)``.

Then per image over all levels: class-wise NMS (IoU ``> 0.6``, legacy ``+1`` widths) and, if more than
``detections_per_img`` (100) remain, every detection scoring at least the ``detections_per_img``-th
best (official ``kthvalue`` rule, so ties at the cut are all kept).
Boxes are xyxy in the pixel space of the network input image (before padding), as in the official
code; rescaling to the original image is the caller's job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ...config import CLASS_SCORES
from .box_coder import BoxCoder
from ...boxes import clip_boxes_to_image, remove_small_boxes
from .nms import batched_nms

__all__ = ["Detections", "positive_map_from_label_tokens", "token_scores_to_class_scores", "exclusive_class_scores",
           "CLASS_SCORES", "GroundingPostProcessor"]


@dataclass
class Detections:
    """One image: ``boxes [N, 4]`` xyxy, ``scores [N]``, ``labels [N]`` int64 (by decreasing score)."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


def positive_map_from_label_tokens(label_to_tokens: Mapping[int, Sequence[int]], num_tokens: int) -> tuple[Tensor, Tensor]:
    """``{label: [token indices]}`` (official ``positive_map_label_to_token``) ->
    ``(positive_map [K, num_tokens] bool, labels [K] int64)`` in the mapping's order."""
    labels = list(label_to_tokens.keys())
    pm = torch.zeros(len(labels), num_tokens, dtype=torch.bool)
    for row, label in enumerate(labels):
        tokens = list(label_to_tokens[label])
        if not tokens:
            raise ValueError(f"label {label} has no tokens")
        if min(tokens) < 0 or max(tokens) >= num_tokens:
            raise ValueError(f"label {label}: token indices {tokens} outside [0, {num_tokens})")
        pm[row, tokens] = True
    return pm, torch.tensor(labels, dtype=torch.long)


def token_scores_to_class_scores(token_probs: Tensor, positive_map: Tensor) -> Tensor:
    """Mean of each class's token probabilities: ``[..., T]`` x ``[K, T]`` -> ``[..., K]``."""
    pm = (positive_map != 0).to(token_probs.dtype)
    counts = pm.sum(-1)
    if (counts == 0).any():
        raise ValueError(f"positive_map rows {(counts == 0).nonzero().flatten().tolist()} select no token")
    return token_probs @ (pm / counts[:, None]).T


def exclusive_class_scores(class_probs: Tensor) -> Tensor:
    """Scores of classes that exclude one another: ``[..., K]`` probabilities -> ``[..., K]``.

    A box's score for class ``k`` becomes its best class probability (how sure it is that the box
    is one of the named things) times the softmax over the classes' logits (which of them it is):
    ``max_j p_j * softmax(logit p)_k``. Independent sigmoids let a class whose name was never
    trained on boxes (zero-shot) fire at the same score on every object; shared out, it scores
    high only where it beats the other named classes. With one class the scores are unchanged."""
    if class_probs.shape[-1] < 2:
        return class_probs
    p = class_probs.clamp(1e-6, 1 - 1e-6)
    share = torch.softmax(torch.log(p) - torch.log1p(-p), dim=-1)
    return class_probs.amax(-1, keepdim=True) * share


class GroundingPostProcessor:
    """``__call__(bbox_reg, centerness, dot_product_logits, anchors, image_sizes, positive_map,
    class_labels=None) -> list[Detections]``.

    Args (call):
        bbox_reg: per level ``[B, 4, H_l, W_l]``; centerness: per level ``[B, 1, H_l, W_l]``;
        dot_product_logits: per level ``[B, H_l*W_l, T]``; anchors: per level ``[H_l*W_l, 4]``;
        image_sizes: ``B`` pairs ``(height, width)`` of the network input images (before padding);
        positive_map: ``[K, T]`` class -> tokens (non-zero = token belongs to the class);
        class_labels: ``[K]`` label reported for each class row; default ``1..K`` (the official
        label ids are the keys of the label -> token map, 1-based for detection prompts).

    ``class_scores`` (:data:`CLASS_SCORES`): "independent", each row of ``positive_map`` scored on
    its own (official); "exclusive", the rows are classes of which a box is at most one
    (:func:`exclusive_class_scores`; for detection prompts, not for the phrases of a caption).
    """

    def __init__(
        self,
        box_coder: BoxCoder | None = None,
        pre_nms_thresh: float = 0.05,
        pre_nms_top_n: int = 1000,
        nms_thresh: float = 0.6,
        detections_per_img: int = 100,
        min_size: float = 0.0,
        class_scores: str = "independent",
    ) -> None:
        if class_scores not in CLASS_SCORES:
            raise ValueError(f"class_scores must be one of {CLASS_SCORES}, got {class_scores!r}")
        self.class_scores = class_scores
        self.box_coder = box_coder or BoxCoder()
        self.pre_nms_thresh = pre_nms_thresh
        self.pre_nms_top_n = pre_nms_top_n
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.min_size = min_size

    @torch.no_grad()
    def __call__(
        self,
        bbox_reg: Sequence[Tensor],
        centerness: Sequence[Tensor],
        dot_product_logits: Sequence[Tensor],
        anchors: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        positive_map: Tensor,
        class_labels: Tensor | None = None,
    ) -> list[Detections]:
        batch = bbox_reg[0].shape[0]
        if len(image_sizes) != batch:
            raise ValueError(f"{len(image_sizes)} image sizes for a batch of {batch}")
        num_tokens = dot_product_logits[0].shape[-1]
        if positive_map.dim() != 2 or positive_map.shape[1] != num_tokens:
            raise ValueError(f"positive_map must be [K, {num_tokens}], got {tuple(positive_map.shape)}")
        num_classes = positive_map.shape[0]
        if class_labels is None:
            class_labels = torch.arange(1, num_classes + 1)
        if class_labels.shape != (num_classes,):
            raise ValueError(f"class_labels must be [{num_classes}], got {tuple(class_labels.shape)}")
        class_labels = class_labels.to(bbox_reg[0].device)
        offset = self.box_coder.pixel_offset

        per_image: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in range(batch)]
        for reg, ctr, logit, anc in zip(bbox_reg, centerness, dot_product_logits, anchors):
            reg = reg.float().permute(0, 2, 3, 1).reshape(batch, -1, 4)
            ctr = ctr.float().permute(0, 2, 3, 1).reshape(batch, -1).sigmoid()
            cls = token_scores_to_class_scores(logit.float().sigmoid(), positive_map.to(logit.device))  # [B, A, K]
            if self.class_scores == "exclusive":
                cls = exclusive_class_scores(cls)
            candidates = cls > self.pre_nms_thresh
            ranked = cls * ctr[:, :, None]
            for b in range(batch):
                cand = candidates[b]
                n = min(int(cand.sum()), self.pre_nms_top_n)
                scores, top = ranked[b][cand].topk(n)
                loc_cls = cand.nonzero()[top]
                loc, k = loc_cls[:, 0], loc_cls[:, 1]
                boxes = self.box_coder.decode(reg[b, loc], anc[loc].to(reg))
                boxes = clip_boxes_to_image(boxes, image_sizes[b], offset)
                keep = remove_small_boxes(boxes, self.min_size, offset)
                per_image[b].append((boxes[keep], scores[keep].sqrt(), class_labels[k[keep]]))

        results = []
        for b in range(batch):
            boxes = torch.cat([p[0] for p in per_image[b]])
            scores = torch.cat([p[1] for p in per_image[b]])
            labels = torch.cat([p[2] for p in per_image[b]])
            keep = batched_nms(boxes, scores, labels, self.nms_thresh, offset)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            n = scores.numel()
            if n > self.detections_per_img > 0:
                thresh = torch.kthvalue(scores.cpu().float(), n - self.detections_per_img + 1).values.item()
                sel = scores >= thresh
                boxes, scores, labels = boxes[sel], scores[sel], labels[sel]
            results.append(Detections(boxes, scores, labels))
        return results

"""Training losses of the official fine-grained FIBER head (``ATSSLossComputation`` with
``USE_DOT_PRODUCT_TOKEN_LOSS``), single process.

ATSS assigns each image's anchors to its ground-truth boxes (:func:`atss_assign_batch`, the whole
batch in one pass). Then, with
``num_pos = max(total positive anchors in the batch, 1)``:

* ``loss_dot_product_token = sum(focal(logits, token_targets)[text_mask]) / num_pos`` — sigmoid focal
  loss (alpha 0.25, gamma 2) on every (anchor, token) pair whose token is unmasked. A positive
  anchor's targets are its box's row of the positive map (``[num_boxes, T]``, binarised as the
  official collate does); a background anchor's targets are all 0 except the **last token column,
  set to 1** ("no object" token, official quirk; it only counts when that column is unmasked, i.e.
  when the text fills all ``T`` positions).
* ``loss_reg = 2.0 * sum_pos(c * (1 - GIoU(decode(pred), decode(target)))) / sum_pos(c)`` with
  ``c`` the centerness targets (``REG_LOSS_WEIGHT`` 2.0; plain sum if all ``c`` are 0).
* ``loss_centerness = BCEWithLogits_sum(centerness_logits_pos, c) / num_pos``.
* optional, not official (``align_loss_weight > 0``): ``loss_align``, a contrastive word-region
  term (:func:`token_region_contrastive_loss`). Off by default, so the dict is the official one.

With ``world_size > 1`` the official code averages ``num_pos`` and ``sum(c)`` over processes; pass
the all-reduced values through ``num_pos_override`` / ``centerness_sum_override`` to reproduce it.
All computations are in float32 (the official loss casts its inputs to float32 under AMP).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from .atss import atss_assign_batch
from .box_coder import BoxCoder

__all__ = [
    "GroundingTarget",
    "token_sigmoid_focal_loss",
    "giou_loss",
    "centerness_targets",
    "token_region_contrastive_loss",
    "attention_grounding_loss",
    "GroundingLoss",
]


@dataclass
class GroundingTarget:
    """Ground truth of one image: ``boxes [G, 4]`` xyxy (pixels of the network input) and
    ``positive_map [G, T]`` (box -> tokens it grounds; any non-zero entry counts as 1)."""

    boxes: Tensor
    positive_map: Tensor


def token_sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, text_mask: Tensor | None = None, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Summed binary focal loss over (anchor, token) pairs with an unmasked token.

    Args:
        logits: ``[B, A, T]``. targets: ``[B, A, T]`` in {0, 1}. text_mask: ``[B, T]`` (non-zero = keep).

    Per element: ``BCE(x, t) * (1 - p_t)^gamma * (alpha t + (1 - alpha)(1 - t))``,
    ``p_t = p t + (1 - p)(1 - t)``, ``p = sigmoid(x)``. Returns a scalar.
    """
    if logits.dim() != 3 or targets.shape != logits.shape:
        raise ValueError(f"logits and targets must be equal [B, A, T], got {tuple(logits.shape)}, {tuple(targets.shape)}")
    logits = logits.float()
    targets = targets.float()
    if text_mask is not None:
        if text_mask.shape != (logits.shape[0], logits.shape[2]):
            raise ValueError(f"text_mask must be [B, T] = {(logits.shape[0], logits.shape[2])}, got {tuple(text_mask.shape)}")
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if text_mask is not None:
        # zeroed rather than selected: a boolean selection of [B, A, T] costs more than the loss
        loss = loss.masked_fill(~(text_mask > 0)[:, None, :], 0.0)
    return loss.sum()


def giou_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Summed ``1 - GIoU`` of paired boxes ``[N, 4]`` (continuous widths, official ``GIoULoss``).

    ``pred``'s x2/y2 are first raised to at least x1/y1; areas get ``+1e-7`` in union and enclosure.
    With ``weight [N]`` (and ``weight.sum() > 0``) returns ``sum(weight * loss)``.
    """
    if pred.shape != target.shape or pred.dim() != 2 or pred.shape[-1] != 4:
        raise ValueError(f"pred and target must be equal [N, 4], got {tuple(pred.shape)}, {tuple(target.shape)}")
    px1, py1, px2, py2 = pred.unbind(1)
    px2 = torch.maximum(px1, px2)
    py2 = torch.maximum(py1, py2)
    tx1, ty1, tx2, ty2 = target.unbind(1)
    pred_area = (px2 - px1) * (py2 - py1)
    target_area = (tx2 - tx1) * (ty2 - ty1)
    iw = torch.minimum(px2, tx2) - torch.maximum(px1, tx1)
    ih = torch.minimum(py2, ty2) - torch.maximum(py1, ty1)
    inter = torch.where((iw > 0) & (ih > 0), iw * ih, torch.zeros_like(iw))
    enclosing = (torch.maximum(px2, tx2) - torch.minimum(px1, tx1)) * (torch.maximum(py2, ty2) - torch.minimum(py1, ty1)) + 1e-7
    union = pred_area + target_area - inter + 1e-7
    losses = 1 - (inter / union - (enclosing - union) / enclosing)
    if weight is not None and weight.sum() > 0:
        return (losses * weight).sum()
    return losses.sum()


def centerness_targets(gt_boxes: Tensor, anchors: Tensor) -> Tensor:
    """``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` of anchor centres in paired boxes ``[N, 4]`` -> ``[N]``."""
    cx = (anchors[:, 2] + anchors[:, 0]) / 2
    cy = (anchors[:, 3] + anchors[:, 1]) / 2
    lr = torch.stack((cx - gt_boxes[:, 0], gt_boxes[:, 2] - cx), dim=1)
    tb = torch.stack((cy - gt_boxes[:, 1], gt_boxes[:, 3] - cy), dim=1)
    return torch.sqrt((lr.min(1).values / lr.max(1).values) * (tb.min(1).values / tb.max(1).values))


def token_region_contrastive_loss(logits: Tensor, positive_tokens: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
    """MDETR's contrastive alignment (Kamath et al. 2021) over the anchors of each image.

    Args:
        logits: ``[B, A, T]`` grounding logits (or ``[A, T]``, one image). positive_tokens: the
        same shape, bool, True where anchor ``a`` is assigned to a box whose phrase holds token
        ``t`` (all False on background anchors). text_mask: ``[B, T]`` (or ``[T]``; non-zero = real token).

    Returns two vectors of ``-log`` softmax probabilities of the positives, image by image:
    ``anchor_to_token [P]``, for each positive anchor a softmax over its image's real tokens, and
    ``token_to_anchor [K]``, for each token positive somewhere a softmax over its image's anchors.

    Why: the official token focal loss scores each (anchor, token) pair on its own. Where most
    phrases name every object of their image, it is nearly minimised by objectness alone, and the
    words of a prompt end up scoring every object alike. Here the words of a prompt compete for
    each anchor and the anchors (objects and background) compete for each word, so "the red ring"
    must score the red ring above the purple one (docs/results.md, "Word-region alignment").
    """
    if logits.dim() == 2:
        if positive_tokens.shape != logits.shape or text_mask.shape != logits.shape[1:]:
            raise ValueError(f"logits [A, T], positive_tokens [A, T] and text_mask [T] expected, got "
                             f"{tuple(logits.shape)}, {tuple(positive_tokens.shape)}, {tuple(text_mask.shape)}")
        logits, positive_tokens, text_mask = logits[None], positive_tokens[None], text_mask[None]
    if (logits.dim() != 3 or positive_tokens.shape != logits.shape
            or text_mask.shape != (logits.shape[0], logits.shape[2])):
        raise ValueError(f"logits [B, A, T], positive_tokens [B, A, T] and text_mask [B, T] expected, got "
                         f"{tuple(logits.shape)}, {tuple(positive_tokens.shape)}, {tuple(text_mask.shape)}")
    logits = logits.float()
    real = (text_mask > 0)[:, None, :].expand_as(logits)
    positive_tokens = positive_tokens.bool() & real
    # Rows are selected before the softmaxes, so none of them is all -inf (no NaN in backward).
    anchors = positive_tokens.any(2)  # [B, A]
    per_anchor = logits[anchors]  # [P, T]
    anchor_to_token = (per_anchor.masked_fill(~real[anchors], float("-inf")).logsumexp(1)
                       - per_anchor.masked_fill(~positive_tokens[anchors], float("-inf")).logsumexp(1))
    tokens = positive_tokens.any(1)  # [B, T]
    per_token = logits.transpose(1, 2)[tokens]  # [K, A]
    hit = positive_tokens.transpose(1, 2)[tokens]
    token_to_anchor = per_token.logsumexp(1) - per_token.masked_fill(~hit, float("-inf")).logsumexp(1)
    return anchor_to_token, token_to_anchor


def attention_grounding_loss(maps: Sequence[Tensor], input_size: tuple[int, int], targets: Sequence[GroundingTarget]) -> Tensor:
    """How far each grounded word's text-to-image attention is from its boxes: the mean over
    fused layers, images, heads and grounded tokens of ``-log`` (the attention mass on the image
    tokens that its boxes overlap).

    maps: per fused text layer, attention weights ``[B, heads, T, N]`` over the ``N`` tokens of the
    image grid that layer reads (row-major; its stride follows from ``N`` and ``input_size``, the
    padded network input ``(H, W)``). targets: per image, boxes (xyxy, input pixels) and the
    positive map ``[G, T]``. Images without a grounded token add nothing; a batch without any
    gives 0 (with the graph kept)."""
    height, width = input_size
    terms = []
    for weights in maps:
        stride = (height * width / weights.shape[-1]) ** 0.5
        rows, cols = round(height / stride), round(width / stride)
        starts_y = torch.arange(rows, device=weights.device) * stride
        starts_x = torch.arange(cols, device=weights.device) * stride
        for b, target in enumerate(targets):
            if target.boxes.numel() == 0:
                continue
            x0, y0, x1, y1 = target.boxes.to(weights.device).float().unbind(-1)
            over_y = (y0[:, None] < starts_y + stride) & (y1[:, None] > starts_y)  # [G, rows]
            over_x = (x0[:, None] < starts_x + stride) & (x1[:, None] > starts_x)  # [G, cols]
            cells = (over_y[:, :, None] & over_x[:, None, :]).flatten(1).float()  # [G, N]
            covered = ((target.positive_map != 0).float().t().to(weights.device) @ cells).clamp(max=1)  # [T, N]
            grounded = covered.sum(1) > 0
            if grounded.any():
                mass = (weights[b][:, grounded] * covered[grounded]).sum(-1)  # [heads, tokens]
                terms.append(-mass.clamp_min(1e-6).log().mean())
    return torch.stack(terms).mean() if terms else sum(m.sum() for m in maps) * 0.0


def _flatten_levels(maps: Sequence[Tensor], channels: int) -> Tensor:
    """List of ``[B, channels, H, W]`` -> ``[B, sum H*W, channels]`` (row-major locations)."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, channels) for m in maps], dim=1)


class GroundingLoss:
    """``__call__(bbox_reg, centerness, dot_product_logits, anchors, targets, text_mask) -> dict``.

    Args (call):
        bbox_reg: per level ``[B, 4, H_l, W_l]``. centerness: per level ``[B, 1, H_l, W_l]``.
        dot_product_logits: per level ``[B, H_l*W_l, T]``. anchors: per level ``[H_l*W_l, 4]``.
        targets: ``B`` :class:`GroundingTarget`. text_mask: ``[B, T]``.

    Returns ``{"loss_reg", "loss_centerness", "loss_dot_product_token"}`` (scalars, already weighted).
    """

    def __init__(
        self,
        box_coder: BoxCoder | None = None,
        topk: int = 9,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        reg_loss_weight: float = 2.0,
        token_loss_weight: float = 1.0,
        align_loss_weight: float = 0.0,
    ) -> None:
        self.box_coder = box_coder or BoxCoder()
        self.topk = topk
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.reg_loss_weight = reg_loss_weight
        self.token_loss_weight = token_loss_weight
        self.align_loss_weight = align_loss_weight

    def __call__(
        self,
        bbox_reg: Sequence[Tensor],
        centerness: Sequence[Tensor],
        dot_product_logits: Sequence[Tensor],
        anchors: Sequence[Tensor],
        targets: Sequence[GroundingTarget],
        text_mask: Tensor,
        num_pos_override: float | None = None,
        centerness_sum_override: float | None = None,
    ) -> dict[str, Tensor]:
        batch = bbox_reg[0].shape[0]
        if len(targets) != batch:
            raise ValueError(f"{len(targets)} targets for a batch of {batch}")
        if not (len(bbox_reg) == len(centerness) == len(dot_product_logits) == len(anchors)):
            raise ValueError("bbox_reg, centerness, dot_product_logits and anchors need one entry per level")
        box_flat = _flatten_levels(bbox_reg, 4).float()  # [B, A, 4]
        ctr_flat = _flatten_levels(centerness, 1).float().squeeze(-1)  # [B, A]
        logits = torch.cat(list(dot_product_logits), dim=1).float()  # [B, A, T]
        anchors_flat = torch.cat(list(anchors)).to(box_flat)
        num_anchors, num_tokens = anchors_flat.shape[0], logits.shape[-1]
        if box_flat.shape[1] != num_anchors or logits.shape[1] != num_anchors:
            raise ValueError(
                f"predictions cover {box_flat.shape[1]} / {logits.shape[1]} locations but there are {num_anchors} anchors"
            )

        # ATSS checks the boxes as given (named as the caller's targets[b].boxes[i]) before any use
        matched = atss_assign_batch(anchors, [t.boxes for t in targets], self.topk, self.box_coder.pixel_offset,
                                    "targets[{}].boxes")  # [B, A]
        for b, target in enumerate(targets):
            g = target.boxes.shape[0]
            if target.positive_map.shape != (g, num_tokens):
                raise ValueError(
                    f"targets[{b}].positive_map must be [{g}, {num_tokens}], got {tuple(target.positive_map.shape)}"
                )
        # Every image's boxes and positive map padded to the batch's most boxes: [B, G, 4], [B, G, T].
        gt = pad_sequence([t.boxes.to(anchors_flat) for t in targets], batch_first=True)
        maps = pad_sequence([(t.positive_map != 0).to(logits) for t in targets], batch_first=True)
        positive = matched >= 0  # [B, A]
        image_idx, anchor_idx = positive.nonzero(as_tuple=True)  # image-major, as the losses sum
        box_idx = matched[positive]
        token_targets = torch.zeros_like(logits)
        token_targets[..., -1] = (~positive).to(logits)  # official "no object" token
        token_targets[image_idx, anchor_idx] = maps[image_idx, box_idx]
        if self.align_loss_weight > 0:
            positive_tokens = token_targets.bool() & positive[..., None]  # the "no object" column is not a word
            anchor_to_token, token_to_anchor = token_region_contrastive_loss(logits, positive_tokens, text_mask)

        num_pos = float(positive.sum()) if num_pos_override is None else float(num_pos_override)
        num_pos = max(num_pos, 1.0)
        token_loss = token_sigmoid_focal_loss(logits, token_targets, text_mask, self.focal_alpha, self.focal_gamma) / num_pos

        box_pos = box_flat[positive]
        ctr_pos = ctr_flat[positive]
        if box_pos.shape[0] > 0:
            anc_pos = anchors_flat[anchor_idx]
            # through the anchor encoding and back, as the official loss takes its targets
            gt_pos = self.box_coder.decode(self.box_coder.encode(gt[image_idx, box_idx], anc_pos), anc_pos)
            ctr_t = centerness_targets(gt_pos, anc_pos)
            ctr_sum = float(ctr_t.sum()) if centerness_sum_override is None else float(centerness_sum_override)
            reg_loss = giou_loss(self.box_coder.decode(box_pos, anc_pos), gt_pos, weight=ctr_t) / ctr_sum
            ctr_loss = F.binary_cross_entropy_with_logits(ctr_pos, ctr_t, reduction="sum") / num_pos
        else:
            # keep the graph (official: sum over the empty selection)
            reg_loss = box_pos.sum()
            ctr_loss = ctr_pos.sum()
        losses = {
            "loss_reg": reg_loss * self.reg_loss_weight,
            "loss_centerness": ctr_loss,
            "loss_dot_product_token": token_loss * self.token_loss_weight,
        }
        if self.align_loss_weight > 0:
            # mean over the batch of each direction, then of the two; 0 (in the graph) without a positive
            align = (0.5 * (anchor_to_token.mean() + token_to_anchor.mean()) if anchor_to_token.numel()
                     else logits.sum() * 0.0)
            losses["loss_align"] = self.align_loss_weight * align
        return losses

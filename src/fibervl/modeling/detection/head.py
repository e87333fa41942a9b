"""Grounding detection head of the official fine-grained FIBER model (``VLDyHead``).

On top of the DyHead tower, for every pyramid level ``l`` with tower output ``t_l [B, C, H, W]``
(the FPN level itself when the tower has no blocks):

* ``bbox_reg_l = scales[l] * bbox_pred(t_l)`` — 1x1 conv to 4 box deltas (one anchor per location),
  times a learnable scalar per level;
* ``centerness_l = centerness(t_l)`` — 1x1 conv to 1 logit;
* grounding logits: with ``e = F.normalize(text_embedded, dim=-1)`` (``text_embedded`` is the text
  hidden state multiplied by its mask, so padded rows are 0 and stay 0 after normalising),
  ``proj_tokens = token_proj(e / 2)`` ``[B, T, C]``, ``proj_tokens_bias = e @ bias_lang + bias0``
  ``[B, T]`` and ``logits_l = t_l^T @ proj_tokens^T / exp(log_scale) + proj_tokens_bias``
  ``[B, H*W, T]`` (locations in row-major (h, w) order), clamped to ``[-50000, 50000]``.

The official checkpoint also holds ``cls_logits`` (a 1x1 conv to 80 classes). With the dot-product
token loss its output only enters the loss multiplied by 0 and the post-processor only reads its
channel count, so this head has no such layer; the converter drops those keys (see
``fibervl.convert.official_fine_head``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dyhead import DyHeadTower

__all__ = ["Scale", "GroundingHeadOutput", "GroundingHead"]


class Scale(nn.Module):
    """Multiply by a learnable scalar ``scale [1]``."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(init_value)]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


@dataclass
class GroundingHeadOutput:
    """Per-level head outputs (lists ordered finest level first).

    Attributes:
        dot_product_logits: ``[B, H_l*W_l, T]`` token grounding logits per level.
        bbox_reg: ``[B, 4, H_l, W_l]`` box deltas (box-coder space) per level.
        centerness: ``[B, 1, H_l, W_l]`` centerness logits per level.
        tower: ``[B, C, H_l, W_l]`` DyHead tower outputs per level.
        proj_tokens: ``[B, T, C]`` projected token features.
        proj_tokens_bias: ``[B, T]`` per-token logit bias.
    """

    dot_product_logits: list[Tensor]
    bbox_reg: list[Tensor]
    centerness: list[Tensor]
    tower: list[Tensor]
    proj_tokens: Tensor
    proj_tokens_bias: Tensor


class GroundingHead(nn.Module):
    """DyHead tower + box/centerness/grounding predictors.

    Args:
        channels: pyramid and tower channels (256 in the official base model).
        text_dim: text hidden size (768 for RoBERTa-base).
        num_blocks: DyHead blocks (6 official; 0 = no tower, the predictors read the FPN levels).
        num_levels: pyramid levels, one ``Scale`` each (5 official: P3..P7).
        num_groups: GroupNorm groups (16 official).
        prior_prob: focal-loss prior; ``bias0`` starts at ``-log((1 - p) / p)``.
        log_scale: initial ``log_scale`` (logit temperature; 0.0 official).
        logit_clamp: symmetric clamp of the grounding logits (50000 official).

    ``forward(features, text_embedded, location_logits=None)``: ``features`` is a list of
    ``num_levels`` maps ``[B, channels, H_l, W_l]``; ``text_embedded`` is ``[B, T, text_dim]``
    (hidden * mask); ``location_logits`` (not official), one ``[B, H_l*W_l]`` per level, is added
    to every token's logit at each location before the clamp (:mod:`.location`).
    """

    def __init__(
        self,
        channels: int = 256,
        text_dim: int = 768,
        num_blocks: int = 6,
        num_levels: int = 5,
        num_groups: int = 16,
        prior_prob: float = 0.01,
        log_scale: float = 0.0,
        logit_clamp: float = 50000.0,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.text_dim = text_dim
        self.num_levels = num_levels
        self.logit_clamp = logit_clamp
        self.tower = DyHeadTower(channels, num_blocks, num_groups)
        self.bbox_pred = nn.Conv2d(channels, 4, kernel_size=1)
        self.centerness = nn.Conv2d(channels, 1, kernel_size=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        self.token_proj = nn.Linear(text_dim, channels)
        self.log_scale = nn.Parameter(torch.tensor([float(log_scale)]))
        self.bias_lang = nn.Parameter(torch.zeros(text_dim))
        self.bias0 = nn.Parameter(torch.tensor([-math.log((1.0 - prior_prob) / prior_prob)]))
        for conv in (self.bbox_pred, self.centerness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def project_tokens(self, text_embedded: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, T, D] -> (proj_tokens [B, T, C], proj_tokens_bias [B, T])``."""
        if text_embedded.dim() != 3 or text_embedded.shape[-1] != self.text_dim:
            raise ValueError(f"text_embedded must be [B, T, {self.text_dim}], got {tuple(text_embedded.shape)}")
        e = F.normalize(text_embedded, p=2, dim=-1)
        proj_tokens = self.token_proj(e / 2.0)
        proj_bias = torch.matmul(e, self.bias_lang) + self.bias0
        return proj_tokens, proj_bias

    def forward(self, features: Sequence[Tensor], text_embedded: Tensor,
                location_logits: Sequence[Tensor] | None = None) -> GroundingHeadOutput:
        if len(features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} pyramid levels, got {len(features)}")
        batch = features[0].shape[0]
        for i, f in enumerate(features):
            if f.dim() != 4 or f.shape[0] != batch or f.shape[1] != self.channels:
                raise ValueError(f"level {i} must be [{batch}, {self.channels}, H, W], got {tuple(f.shape)}")
        if text_embedded.shape[0] != batch:
            raise ValueError(f"text batch {text_embedded.shape[0]} != image batch {batch}")
        tower = self.tower(features)
        proj_tokens, proj_bias = self.project_tokens(text_embedded)
        logits, bbox_reg, centerness = [], [], []
        for level, t in enumerate(tower):
            bbox_reg.append(self.scales[level](self.bbox_pred(t)))
            centerness.append(self.centerness(t))
            queries = t.flatten(2).transpose(1, 2)  # [B, H*W, C], row-major (h, w)
            # official: matmul / exp(log_scale) + bias; dividing keeps the rounding identical
            logit = torch.matmul(queries, proj_tokens.transpose(-1, -2)) / torch.exp(self.log_scale)
            logit = logit + proj_bias[:, None, :]
            if location_logits is not None:
                logit = logit + location_logits[level][:, :, None].to(logit.dtype)
            logits.append(logit.clamp(-self.logit_clamp, self.logit_clamp))
        return GroundingHeadOutput(logits, bbox_reg, centerness, tower, proj_tokens, proj_bias)

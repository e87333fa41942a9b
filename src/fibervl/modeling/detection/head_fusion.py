"""Image-text fusion in the detection head, GLIP's ``VLFuse`` idea (Li et al., CVPR 2022).

FIBER fuses the modalities inside the backbones; GLIP fuses them in the detection head, after
unimodal backbones. This module is the head-side variant, so the two can be compared on one
detector (``DetectionConfig.head_fusion_layers``; ``fusion.num_layers=0`` switches the
backbone's fusion off).

Each :class:`BidirectionalCrossAttention` layer reads the visual tokens of every pyramid level,
concatenated (``N = sum_l H_l * W_l``), and the text token states, and computes one score matrix
``S = Q_v K_t^T / sqrt(d)`` per head ``[B, heads, N, T]``, used both ways:

* visual update: each visual token attends to the real text tokens (softmax of ``S`` over ``T``,
  padding masked) and reads their values;
* text update: each text token attends to all visual tokens (softmax of ``S^T`` over ``N``) and
  reads theirs.

Both inputs are LayerNorm-ed before the attention; each update goes through an output projection
and is added to its input scaled by a learnable per-channel gate
(``x + gate * update``, GLIP's layer scale ``gamma``). The gates start at
``config.fusion.alpha_init``, the value the backbone's fusion gates start at.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..layers import merge_heads, split_heads

__all__ = ["BidirectionalCrossAttention", "HeadFusion"]


class BidirectionalCrossAttention(nn.Module):
    """One layer of visual <-> text cross-attention with gated residuals.

    Args:
        visual_dim: channels of the visual tokens (the FPN width ``C``); also the attention width.
        text_dim: width ``D`` of the text states.
        num_heads: attention heads (``visual_dim`` must be divisible by it).
        gate_init: initial value of both gates (every channel).

    ``forward(visual [B, N, C], text [B, T, D], text_mask [B, T]) -> (visual [B, N, C], text [B, T, D])``;
    ``text_mask`` is 1 (or True) on real tokens. A text with no real token gets no visual update.
    """

    def __init__(self, visual_dim: int, text_dim: int, num_heads: int, gate_init: float = 0.0,
                 eps: float = 1e-5) -> None:
        super().__init__()
        if num_heads < 1 or visual_dim % num_heads:
            raise ValueError(f"visual_dim {visual_dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (visual_dim // num_heads) ** -0.5
        self.visual_norm = nn.LayerNorm(visual_dim, eps=eps)
        self.text_norm = nn.LayerNorm(text_dim, eps=eps)
        self.visual_query = nn.Linear(visual_dim, visual_dim)
        self.text_key = nn.Linear(text_dim, visual_dim)
        self.visual_value = nn.Linear(visual_dim, visual_dim)
        self.text_value = nn.Linear(text_dim, visual_dim)
        self.visual_out = nn.Linear(visual_dim, visual_dim)
        self.text_out = nn.Linear(visual_dim, text_dim)
        self.visual_gate = nn.Parameter(torch.full((visual_dim,), float(gate_init)))
        self.text_gate = nn.Parameter(torch.full((text_dim,), float(gate_init)))

    def forward(self, visual: Tensor, text: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        v, t = self.visual_norm(visual), self.text_norm(text)
        query = split_heads(self.visual_query(v), self.num_heads)  # [B, h, N, d]
        key = split_heads(self.text_key(t), self.num_heads)  # [B, h, T, d]
        scores = torch.matmul(query, key.transpose(-1, -2)) * self.scale  # [B, h, N, T]

        real = text_mask.bool()[:, None, None, :]  # [B, 1, 1, T]
        to_text = scores.masked_fill(~real, float("-inf")).softmax(dim=-1)
        # a text with no real token: every score is -inf and softmax gives NaN; it reads nothing
        to_text = to_text.nan_to_num(0.0)
        visual_update = torch.matmul(to_text, split_heads(self.text_value(t), self.num_heads))  # [B, h, N, d]
        to_image = scores.transpose(-1, -2).softmax(dim=-1)  # [B, h, T, N]
        text_update = torch.matmul(to_image, split_heads(self.visual_value(v), self.num_heads))  # [B, h, T, d]

        visual = visual + self.visual_gate * self.visual_out(merge_heads(visual_update))
        text = text + self.text_gate * self.text_out(merge_heads(text_update))
        return visual, text


class HeadFusion(nn.Module):
    """``num_layers`` :class:`BidirectionalCrossAttention` layers over the pyramid and the text.

    ``forward(pyramid, text, text_mask) -> (pyramid, text)``: ``pyramid`` is a list of levels
    ``[B, C, H_l, W_l]``, flattened row-major and concatenated into ``[B, N, C]`` for the
    attention and split back into the same shapes afterwards; ``text [B, T, D]``;
    ``text_mask [B, T]``.
    """

    def __init__(self, channels: int, text_dim: int, num_layers: int, num_heads: int, gate_init: float = 0.0) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"HeadFusion needs at least one layer, got {num_layers}")
        self.layers = nn.ModuleList(
            BidirectionalCrossAttention(channels, text_dim, num_heads, gate_init) for _ in range(num_layers)
        )

    def forward(self, pyramid: Sequence[Tensor], text: Tensor, text_mask: Tensor) -> tuple[list[Tensor], Tensor]:
        shapes = [level.shape for level in pyramid]
        visual = torch.cat([level.flatten(2).transpose(1, 2) for level in pyramid], dim=1)  # [B, N, C]
        for layer in self.layers:
            visual, text = layer(visual, text, text_mask)
        levels = visual.split([h * w for _, _, h, w in shapes], dim=1)
        return [lv.transpose(1, 2).reshape(shape) for lv, shape in zip(levels, shapes)], text

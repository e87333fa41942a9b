"""DyHead tower of the official fine-grained FIBER head (``VLDyHead`` without early fusion).

Each block (official ``DyConv``) maps the list of pyramid levels ``[B, C, H_l, W_l]`` (finest first)
to a new list of the same shapes:

1. **Spatial attention.** ``offset`` (conv3x3 C->27) on the current level gives 18 offset channels
   (dy, dx per tap) and 9 mask channels (sigmoid). The same offset/mask feed three modulated
   deformable 3x3 convs, each followed by GroupNorm:

   * ``conv_same`` (official ``DyConv[1]``): stride 1 on the current level;
   * ``conv_from_finer`` (``DyConv[2]``): stride 2 on the previous, finer level (if any);
   * ``conv_from_coarser`` (``DyConv[0]``): stride 1 on the next, coarser level (if any), then
     bilinear upsampling with ``align_corners=True`` (``F.upsample_bilinear``) to the current size.
     Its offset/mask map is larger than its output; the official CUDA kernel reads the first
     ``18*Ho*Wo`` / ``9*Ho*Wo`` values of it as if they were ``[18, Ho, Wo]`` / ``[9, Ho, Wo]``. This
     raw-read is reproduced (``reinterpret_oversized=True``); cropping instead changes the outputs by
     10-60 %, so the official weights need it.

2. **Scale-aware attention** (official ``AttnConv``): for each term ``f``,
   ``w = h_sigmoid(relu(conv1x1_{C->1}(GAP(f))))``; the level's output is ``mean_terms(f * w)``.

3. **Task-aware attention** (DyReLU): ``GAP -> Linear(C, C/4) -> ReLU -> Linear(C/4, 4C) -> h_sigmoid``
   split into a1, b1, a2, b2; ``out = max(x*((a1-.5)*2+1) + (b1-.5), x*((a2-.5)*2) + (b2-.5))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .deform_conv import ModulatedDeformConv2d

__all__ = ["h_sigmoid", "DeformConvGN", "DyReLU", "DyHeadBlock", "DyHeadTower"]


def h_sigmoid(x: Tensor) -> Tensor:
    """Hard sigmoid ``relu6(x + 3) / 6`` (elementwise, any shape)."""
    return F.relu6(x + 3.0) / 6.0


class DeformConvGN(nn.Module):
    """Modulated deformable 3x3 conv (padding 1, bias) followed by ``GroupNorm(num_groups, C)``.

    ``forward(x [B,C,H,W], offset [B,18,h,w], mask [B,9,h,w]) -> [B,C,Ho,Wo]``.
    """

    def __init__(self, channels: int, stride: int, num_groups: int, reinterpret_oversized: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedDeformConv2d(
            channels, channels, 3, stride=stride, padding=1, reinterpret_oversized=reinterpret_oversized
        )
        self.norm = nn.GroupNorm(num_groups, channels)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        return self.norm(self.conv(x, offset, mask))


class DyReLU(nn.Module):
    """Dynamic ReLU with two pieces and bias (official ``DYReLU``, K2=True, use_bias=True, lambda_a=1).

    ``forward(x [B,C,H,W]) -> [B,C,H,W]``.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.channels = channels
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, 4 * channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        y = x.mean(dim=(2, 3))
        y = h_sigmoid(self.fc2(F.relu(self.fc1(y)))).view(b, 4 * c, 1, 1)
        a1, b1, a2, b2 = torch.split(y, c, dim=1)
        # lambda_a = 2 (official doubles it), init_a = (1, 0), init_b = (0, 0)
        a1 = (a1 - 0.5) * 2.0 + 1.0
        a2 = (a2 - 0.5) * 2.0
        b1 = b1 - 0.5
        b2 = b2 - 0.5
        return torch.maximum(x * a1 + b1, x * a2 + b2)


class DyHeadBlock(nn.Module):
    """One DyHead block over all pyramid levels. ``forward(list of [B,C,H_l,W_l]) -> same shapes``."""

    def __init__(self, channels: int, num_groups: int = 16) -> None:
        super().__init__()
        if channels % num_groups != 0:
            raise ValueError(f"channels ({channels}) must be divisible by GroupNorm groups ({num_groups})")
        self.offset = nn.Conv2d(channels, 27, kernel_size=3, padding=1)
        self.conv_from_coarser = DeformConvGN(channels, 1, num_groups, reinterpret_oversized=True)
        self.conv_same = DeformConvGN(channels, 1, num_groups)
        self.conv_from_finer = DeformConvGN(channels, 2, num_groups)
        self.scale_attn = nn.Conv2d(channels, 1, kernel_size=1)
        self.task_attn = DyReLU(channels)
        # official DyConv.init_weights: N(0, 0.01) weights, zero bias for the three convs and the
        # attention conv; offset conv and DyReLU keep PyTorch defaults.
        for conv in (self.conv_from_coarser.conv, self.conv_same.conv, self.conv_from_finer.conv, self.scale_attn):
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        outputs = []
        last = len(features) - 1
        for level, feature in enumerate(features):
            offset_mask = self.offset(feature)
            offset = offset_mask[:, :18]
            mask = offset_mask[:, 18:].sigmoid()
            terms = [self.conv_same(feature, offset, mask)]
            if level > 0:
                terms.append(self.conv_from_finer(features[level - 1], offset, mask))
            if level < last:
                coarse = self.conv_from_coarser(features[level + 1], offset, mask)
                terms.append(F.interpolate(coarse, size=feature.shape[-2:], mode="bilinear", align_corners=True))
            for t in terms[1:]:
                if t.shape != terms[0].shape:
                    raise ValueError(
                        f"level {level}: neighbour term has shape {tuple(t.shape)}, expected {tuple(terms[0].shape)}; "
                        "each level must be the stride-2 reduction (conv 3x3, pad 1) of the previous one"
                    )
            stacked = torch.stack(terms)  # [n_terms, B, C, H, W]
            attn = h_sigmoid(F.relu(self.scale_attn(stacked.flatten(0, 1).mean(dim=(2, 3), keepdim=True))))
            attn = attn.view(len(terms), feature.shape[0], 1, 1, 1)
            outputs.append(self.task_attn((stacked * attn).mean(dim=0)))
        return outputs


class DyHeadTower(nn.Module):
    """``num_blocks`` DyHead blocks in sequence. ``forward(list of [B,C,H_l,W_l]) -> same shapes``.

    ``num_blocks=0`` is no tower: the levels pass through unchanged and the predictors read the
    FPN directly. The official model has 6 blocks; the tiny preset has none, because a small
    tower trained for a few hundred steps loses the colours and shapes the grounding logits need
    (docs/results.md, "The detection tower and the attributes")."""

    def __init__(self, channels: int = 256, num_blocks: int = 6, num_groups: int = 16) -> None:
        super().__init__()
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        self.blocks = nn.ModuleList(DyHeadBlock(channels, num_groups) for _ in range(num_blocks))
        # Recompute each block's activations in the backward pass (official DYHEAD.USE_CHECKPOINT).
        self.checkpointing = False

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        feats = list(features)
        for block in self.blocks:
            if self.checkpointing and self.training and torch.is_grad_enabled():
                feats = checkpoint(block, feats, use_reentrant=False)
            else:
                feats = block(feats)
        return feats

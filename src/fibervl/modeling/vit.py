"""A plain Vision Transformer (ViT): the image encoder of ALBEF (and of VLMo-style models).

Patch embedding (a strided convolution), a learned CLS token, learned absolute positions,
pre-norm blocks (``x + attn(LN(x))``, ``x + mlp(LN(x))``) and a final LayerNorm, as in the timm
``VisionTransformer`` that ALBEF builds with ``qkv_bias=True`` and LayerNorm eps 1e-6.
Attention runs through ``F.scaled_dot_product_attention`` (fastest on these CPUs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import DropPath, Mlp, merge_heads, split_heads


@dataclass
class VitConfig:
    """``image_size`` is the training resolution the positions are learned for; other sizes
    (a multiple of ``patch_size``) interpolate the position grid bicubically, as ALBEF does when
    fine-tuning at 384 px a model pre-trained at 256 px."""

    image_size: int = 256
    patch_size: int = 16
    in_channels: int = 3
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-6
    drop_path_rate: float = 0.0

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


class VitAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm names: ``qkv``, ``proj``)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, D] -> [B, L, D] (no mask: every image token sees every other)."""
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class VitBlock(nn.Module):
    def __init__(self, cfg: VitConfig, drop_path: float) -> None:
        super().__init__()
        d = cfg.width
        self.norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.attn = VitAttention(d, cfg.num_heads)
        self.norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """images [B, 3, S, S] -> tokens [B, 1 + (S/p)^2, D] after the final LayerNorm; token 0 is CLS."""

    def __init__(self, cfg: VitConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(cfg.in_channels, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.grid**2, cfg.width))
        # Stochastic depth rising linearly from 0 to drop_path_rate over the blocks (timm's rule).
        rates = [cfg.drop_path_rate * i / max(1, cfg.depth - 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(VitBlock(cfg, r) for r in rates)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    def positions(self, grid: int) -> torch.Tensor:
        """[1, 1 + grid^2, D]: the learned positions, the patch part resized if ``grid`` differs."""
        if grid == self.cfg.grid:
            return self.pos_embed
        cls, patches = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        g, d = self.cfg.grid, self.cfg.width
        patches = patches.reshape(1, g, g, d).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
        return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, grid * grid, d)], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)  # [B, D, S/p, S/p]
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"ViT expects square images, got {tuple(images.shape[-2:])}")
        grid = x.shape[-1]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self.positions(grid).to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

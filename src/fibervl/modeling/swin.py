"""Swin Transformer image backbone with optional image-to-text fusion in chosen blocks.

``SwinConfig.conv_stages`` > 0 makes the tower a hybrid (fiber-tiny's choice; fiber-base keeps the
official Swin): a convolutional stem, ResNet basic blocks in the first stages and strided-conv
downsampling, Swin blocks (and fusion) above. At the embedded data's budgets the all-Swin tower
learns colour at once but sits on a long plateau before it tells shapes apart; the conv stages
leave it within the first few hundred steps (docs/results.md, issue 31).

Tokens travel between blocks as [B, H, W, C] grids so windowing is a reshape, not a gather.
Feature maps whose size is not a multiple of the window are zero-padded after ``norm1`` (the
detection Swin's rule); padded tokens take part as keys, exactly as in the official code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SwinConfig
from .fusion import ImageToTextAttention
from .layers import DropPath, Mlp


def relative_position_index(window: int) -> torch.Tensor:
    """[w*w, w*w] index into the (2w-1)^2 relative-position table (Swin's layout)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def resize_relative_position_table(table: torch.Tensor, new_window: int) -> torch.Tensor:
    """Bicubically resize a [(2w-1)^2, heads] table to a new window size (the official loader's rule)."""
    old = int(round(table.shape[0] ** 0.5))
    new = 2 * new_window - 1
    if old == new:
        return table
    grid = table.T.reshape(1, table.shape[1], old, old).float()
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return grid.reshape(table.shape[1], new * new).T.to(table.dtype).contiguous()


def shift_window_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """[nW, w*w, w*w] additive mask (0 / -100) keeping shifted windows from mixing regions."""
    region = torch.zeros(height, width, device=device)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in cuts:
        for ws in cuts:
            region[hs, ws] = label
            label += 1
    windows = region.view(height // window, window, width // window, window).transpose(1, 2).reshape(-1, window * window)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows, with relative position bias."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)

    def position_bias(self) -> torch.Tensor:
        """[heads, w*w, w*w]."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """windows: [B, nW, N, C]; mask: [nW, N, N] additive or None -> [B, nW, N, C]."""
        b, nw, n, c = windows.shape
        head_dim = c // self.num_heads
        qkv = self.qkv(windows).view(b, nw * n, 3, self.num_heads, head_dim)
        bias = self.position_bias()  # [heads, N, N]
        if mask is None:
            # [B*nW, heads, N, D] against a [1, heads, N, N] bias.
            q, k, v = qkv.view(b * nw, n, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
            bias = bias[None]
        else:
            # Fold windows into the head axis, [B, nW*heads, N, D], so the per-window shift mask is
            # a [1, nW*heads, N, N] bias that broadcasts over the batch. SDPA's fused CPU kernel
            # needs 4-D inputs; 5-D ones fall back to a path about 5x slower.
            q, k, v = qkv.view(b, nw, n, 3, self.num_heads, head_dim).permute(3, 0, 1, 4, 2, 5).reshape(
                3, b, nw * self.num_heads, n, head_dim)
            bias = (bias[None] + mask[:, None]).reshape(1, nw * self.num_heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        out = out.reshape(b, nw, self.num_heads, n, head_dim).transpose(2, 3).reshape(b, nw, n, c)
        return self.proj(out)


class SwinBlock(nn.Module):
    """(Shifted) window attention + MLP, each pre-norm with a residual; optional i2t fusion."""

    def __init__(
        self, dim: int, num_heads: int, window: int, shift: bool, mlp_ratio: float, drop_path: float,
        eps: float, single_window_no_shift: bool, fusion_text_dim: int | None = None, i2t_query_norm: bool = True,
    ) -> None:
        super().__init__()
        self.window = window
        self.shift = window // 2 if shift else 0
        self.single_window_no_shift = single_window_no_shift
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = WindowAttention(dim, num_heads, window)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)
        self.i2t = (
            ImageToTextAttention(dim, fusion_text_dim, num_heads, i2t_query_norm, eps)
            if fusion_text_dim is not None else None
        )
        self._mask_cache: dict[tuple, torch.Tensor] = {}

    def _shift_for(self, height: int, width: int) -> int:
        if self.single_window_no_shift and height <= self.window and width <= self.window:
            return 0
        return self.shift

    def _mask(self, hp: int, wp: int, shift: int, device: torch.device) -> torch.Tensor:
        key = (hp, wp, shift, str(device))
        if key not in self._mask_cache:
            self._mask_cache[key] = shift_window_mask(hp, wp, self.window, shift, device)
        return self._mask_cache[key]

    def attention_branch(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, H, W, C] normalised tokens -> window attention output [B, H, W, C]."""
        b, h, w, c = x.shape
        ws = self.window
        pad_h, pad_w = (-h) % ws, (-w) % ws
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        shift = self._shift_for(h, w)
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = x.view(b, hp // ws, ws, wp // ws, ws, c).transpose(2, 3).reshape(b, -1, ws * ws, c)
        mask = self._mask(hp, wp, shift, x.device) if shift else None
        out = self.attn(windows, mask)
        out = out.view(b, hp // ws, wp // ws, ws, ws, c).transpose(2, 3).reshape(b, hp, wp, c)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        if pad_h or pad_w:
            out = out[:, :h, :w]
        return out

    def forward(
        self, x: torch.Tensor, text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: [B, H, W, C]; text: [B, T, Dt] and text_mask [B, 1, 1, T] bool in fusion mode."""
        y = self.attention_branch(self.norm1(x))
        if text is not None:
            b, h, w, c = y.shape
            y = y + self.i2t(y.reshape(b, h * w, c), text, text_mask).view(b, h, w, c)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbour concat (taps (0,0), (1,0), (0,1), (1,1)) -> LayerNorm(4C) -> Linear(4C -> 2C)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 2C]."""
        b, h, w, c = x.shape
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
            h, w = h + h % 2, w + w % 2
        # [B, H/2, dh, W/2, dw, C] -> taps ordered dw-major then dh: (0,0), (1,0), (0,1), (1,1).
        x = x.view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, h // 2, w // 2, 4 * c)
        return self.reduction(self.norm(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (Conv2d) + LayerNorm; pads images to a patch multiple."""

    def __init__(self, patch: int, in_channels: int, dim: int, eps: float) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, H/p, W/p, C]."""
        _, _, h, w = images.shape
        if h % self.patch or w % self.patch:
            images = F.pad(images, (0, (-w) % self.patch, 0, (-h) % self.patch))
        return self.norm(self.proj(images).permute(0, 2, 3, 1))


class ConvStem(nn.Module):
    """Overlapping stem for ``conv_stages``: log2(patch) 3x3 stride-2 conv + BatchNorm + ReLU layers
    (widths doubling up to C), a 1x1 conv, then LayerNorm, as PatchEmbed ends.
    [B, 3, H, W] -> [B, H/p, W/p, C] (H/p rounded up)."""

    def __init__(self, patch: int, in_channels: int, dim: int, eps: float) -> None:
        super().__init__()
        if patch < 2 or patch & (patch - 1):
            raise ValueError(f"a convolutional stem needs a power-of-two patch size >= 2, got {patch}")
        layers, channels, n = [], in_channels, patch.bit_length() - 1
        for i in range(n):
            width = dim // 2 ** (n - 1 - i)
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            channels = width
        layers.append(nn.Conv2d(channels, dim, 1))
        self.body = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.norm(self.body(images).permute(0, 2, 3, 1))


class ConvBlock(nn.Module):
    """ResNet basic block on a channels-last grid, in place of a Swin block in a ``conv_stages``
    stage: ReLU(x + BN(conv3x3(ReLU(BN(conv3x3(x)))))). [B, H, W, C] -> [B, H, W, C]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(x + y).permute(0, 2, 3, 1)


class ConvDownsample(nn.Module):
    """Overlapping downsampling in place of PatchMerging when ``conv_stages`` > 0: 3x3 stride-2
    conv (C -> 2C) + BatchNorm + GELU. [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 2C]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, 2 * dim, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.norm(self.conv(x.permute(0, 3, 1, 2)))).permute(0, 2, 3, 1)


class AbsolutePosition(nn.Module):
    """A learned position embedding added to a grid (Swin's ``ape``): a [C, h, w] table for the
    grid of the config's image size, resized bicubically to any other grid, so that a position
    keeps its meaning as a fraction of the image. [B, H, W, C] -> [B, H, W, C]."""

    def __init__(self, dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(1, dim, *grid))
        nn.init.trunc_normal_(self.table, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        table = self.table
        if tuple(table.shape[-2:]) != tuple(x.shape[1:3]):
            table = F.interpolate(table, size=tuple(x.shape[1:3]), mode="bicubic", align_corners=False)
        return x + table.permute(0, 2, 3, 1).to(x.dtype)


class SwinStage(nn.Module):
    def __init__(self, blocks: list[SwinBlock], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


class SwinTransformer(nn.Module):
    """Swin backbone. Fusion blocks are given as (stage, block) pairs with the text width.

    The fused forward is driven block by block from outside (see ``FiberModel``); this module
    offers the unimodal forward and the pieces.
    """

    def __init__(self, cfg: SwinConfig, fused_blocks: list[tuple[int, int]] = (), text_dim: int = 768,
                 i2t_query_norm: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        window = cfg.resolved_window_size
        dims = cfg.stage_dims()
        self.dims = dims
        hybrid = cfg.conv_stages > 0  # FiberConfig.validate keeps fusion out of the conv stages
        fused = set(map(tuple, fused_blocks))
        self.patch_embed = (ConvStem if hybrid else PatchEmbed)(cfg.patch_size, cfg.in_channels, cfg.embed_dim,
                                                                 cfg.layer_norm_eps)
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        stages, k = [], 0
        for s, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
            blocks = []
            for b in range(depth):
                blocks.append(ConvBlock(dims[s]) if s < cfg.conv_stages else SwinBlock(
                    dims[s], heads, window, shift=b % 2 == 1, mlp_ratio=cfg.mlp_ratio, drop_path=rates[k],
                    eps=cfg.layer_norm_eps, single_window_no_shift=cfg.single_window_no_shift,
                    fusion_text_dim=text_dim if (s, b) in fused else None, i2t_query_norm=i2t_query_norm,
                ))
                k += 1
            merges = s < len(cfg.depths) - 1 and s + 1 not in cfg.unmerged_stages
            downsample = None if not merges else ConvDownsample(dims[s]) if hybrid else PatchMerging(dims[s], cfg.layer_norm_eps)
            stages.append(SwinStage(blocks, downsample))
        self.stages = nn.ModuleList(stages)
        # The first attention stage gets the absolute positions (the stages below are convolutions,
        # whose zero padding is the only other source of position).
        self.position_stage = cfg.conv_stages
        self.absolute_position = None
        if cfg.absolute_position:
            stride = cfg.stage_strides()[self.position_stage]
            grid = (-(-cfg.image_size // stride),) * 2
            self.absolute_position = AbsolutePosition(dims[self.position_stage], grid)
        self.norm = nn.LayerNorm(dims[-1], eps=cfg.layer_norm_eps) if cfg.final_norm else None
        self.feature_norms = nn.ModuleDict(
            {str(s): nn.LayerNorm(dims[s], eps=cfg.layer_norm_eps) for s in cfg.feature_norms}
        )

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Unimodal forward. images: [B, 3, H, W] -> stage outputs (before merging), [B, Hs, Ws, Cs]."""
        x = self.patch_embed(images)
        outs = []
        for s, stage in enumerate(self.stages):
            x = self.enter_stage(s, x)
            for block in stage.blocks:
                x = block(x)
            outs.append(x)
            if stage.downsample is not None:
                x = stage.downsample(x)
        return outs

    def enter_stage(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        """The grid [B, H, W, C] about to enter ``stage``: with the absolute positions added when
        it is the first attention stage and the config asks for them."""
        if self.absolute_position is not None and stage == self.position_stage:
            return self.absolute_position(x)
        return x

    def feature_maps(self, stage_outputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Normalised stage outputs for a detection neck: [B, Cs, Hs, Ws] for each ``feature_norms`` stage."""
        return [
            self.feature_norms[str(s)](stage_outputs[s]).permute(0, 3, 1, 2).contiguous()
            for s in self.cfg.feature_norms
        ]

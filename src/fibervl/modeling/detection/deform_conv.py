"""Modulated deformable convolution (DCNv2) in plain PyTorch.

The official FIBER fine-grained head uses a CUDA-only kernel (``_C.modulated_deform_conv_forward``,
``deformable_groups = groups = 1``). This module reproduces its semantics on any device:

* **Offset layout.** For kernel tap ``k = i * kw + j`` offset channel ``2k`` is the vertical
  displacement ``dy`` and channel ``2k + 1`` the horizontal one ``dx``; mask channel ``k`` scales
  that tap.
* **Sampling.** Output location ``(ho, wo)`` samples the input at
  ``y = ho * stride - padding + i * dilation + dy`` and ``x = wo * stride - padding + j * dilation + dx``
  by bilinear interpolation in which every corner outside the map contributes 0 (equivalently the
  kernel's ``-1 < y < H and -1 < x < W`` test: beyond that range all four corners are outside).
* **Modulation and GEMM.** The sampled value is multiplied by the mask, then one GEMM with
  ``weight.view(Cout, Cin * kh * kw)`` and the bias.
* **Raw-pointer reinterpretation (optional).** The CUDA kernel reads, for batch element ``b``, the
  ``2K * Ho * Wo`` (offset) and ``K * Ho * Wo`` (mask) values that follow the element's first value,
  whatever the spatial size of those tensors. When DyHead passes an offset/mask map computed on a
  *larger* level than the convolution's output (``DyConv[0]``), the kernel therefore reads the first
  ``2K * Ho * Wo`` values of the larger block as if it were ``[2K, Ho, Wo]``. With
  ``reinterpret_oversized=True`` this function does exactly that (on the logical NCHW layout, which is
  the memory layout of the official tensors: a channel slice of a contiguous ``[B, 27, H, W]`` map
  keeps each element's first 18 channels contiguous). Without the flag an offset/mask whose spatial
  size differs from the output raises.

Implementation: one ``F.grid_sample`` (bilinear, zero padding, ``align_corners=False`` with the
pixel -> normalised mapping inverted exactly) for all taps at once, then one matmul. On 2 CPU cores
this was about 4x faster than gathering the four bilinear corners explicitly. Sampling is always
done in float32 (in bf16 a coordinate near 80 px would be off by up to a quarter pixel, and the
official layer also casts its inputs to float32 under autocast); the GEMM runs in the input's dtype,
or in whatever autocast picks for ``matmul``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["modulated_deform_conv2d", "deform_conv_output_size", "ModulatedDeformConv2d"]


def deform_conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length along one axis (same formula as ``F.conv2d`` and the CUDA kernel)."""
    return (size + 2 * padding - (dilation * (kernel - 1) + 1)) // stride + 1


def _fit_offset_map(t: Tensor, name: str, channels: int, out_h: int, out_w: int, reinterpret: bool) -> Tensor:
    """Return ``t`` viewed as ``[B, channels, out_h, out_w]`` (see the module docstring)."""
    if t.dim() != 4 or t.shape[1] != channels:
        raise ValueError(f"{name} must be [B, {channels}, H, W], got {tuple(t.shape)}")
    if t.shape[2] == out_h and t.shape[3] == out_w:
        return t
    if not reinterpret:
        raise ValueError(
            f"{name} spatial size {tuple(t.shape[2:])} differs from the output size {(out_h, out_w)}; "
            "pass reinterpret_oversized=True to reproduce the official kernel's raw read"
        )
    if t.shape[2] * t.shape[3] < out_h * out_w:
        raise ValueError(
            f"{name} map {tuple(t.shape[2:])} is smaller than the output {(out_h, out_w)}: the official "
            "kernel would read past the tensor, there is nothing defined to reproduce"
        )
    # The kernel reads channels*out_h*out_w consecutive values from each element's start.
    return t.reshape(t.shape[0], -1)[:, : channels * out_h * out_w].reshape(t.shape[0], channels, out_h, out_w)


def modulated_deform_conv2d(
    input: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    reinterpret_oversized: bool = False,
) -> Tensor:
    """Modulated deformable convolution.

    Args:
        input: ``[B, Cin, H, W]``.
        offset: ``[B, 2K, Ho, Wo]`` with ``K = kh * kw``; channel ``2k`` is dy, ``2k+1`` dx of tap k.
            With ``reinterpret_oversized`` any ``[B, 2K, H', W']`` with ``H' * W' >= Ho * Wo``.
        mask: ``[B, K, Ho, Wo]`` (same rule as ``offset``), usually a sigmoid output.
        weight: ``[Cout, Cin, kh, kw]``.
        bias: ``[Cout]`` or None.
        stride, padding, dilation: ints, applied to both axes.
        reinterpret_oversized: reproduce the official kernel's raw read of an offset/mask map that is
            larger than the output (see the module docstring).

    Returns:
        ``[B, Cout, Ho, Wo]``.
    """
    if input.dim() != 4:
        raise ValueError(f"input must be [B, Cin, H, W], got {tuple(input.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"weight must be [Cout, Cin, kh, kw], got {tuple(weight.shape)}")
    batch, cin, height, width = input.shape
    cout, cin_w, kh, kw = weight.shape
    if cin_w != cin:
        raise ValueError(f"weight expects {cin_w} input channels, input has {cin} (groups are not supported)")
    if bias is not None and bias.shape != (cout,):
        raise ValueError(f"bias must be [{cout}], got {tuple(bias.shape)}")
    if stride < 1 or dilation < 1 or padding < 0:
        raise ValueError(f"invalid stride/padding/dilation {stride}/{padding}/{dilation}")
    out_h = deform_conv_output_size(height, kh, stride, padding, dilation)
    out_w = deform_conv_output_size(width, kw, stride, padding, dilation)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"input {height}x{width} too small for kernel {kh}x{kw} with padding {padding}")
    taps = kh * kw
    if offset.shape[0] != batch or mask.shape[0] != batch:
        raise ValueError(
            f"batch mismatch: input {batch}, offset {offset.shape[0]}, mask {mask.shape[0]}"
        )
    offset = _fit_offset_map(offset, "offset", 2 * taps, out_h, out_w, reinterpret_oversized)
    mask = _fit_offset_map(mask, "mask", taps, out_h, out_w, reinterpret_oversized)

    device = input.device
    n_loc = out_h * out_w
    # float32 at least (float64 stays float64, for gradcheck and references)
    sdt = torch.promote_types(input.dtype, torch.float32)
    # Absolute sampling coordinates in float32, laid out [B, K, Ho*Wo].
    off = offset.to(sdt).reshape(batch, taps, 2, n_loc)
    base_y = (torch.arange(out_h, device=device, dtype=sdt) * stride - padding).repeat_interleave(out_w)
    base_x = (torch.arange(out_w, device=device, dtype=sdt) * stride - padding).repeat(out_h)
    tap_i = torch.arange(kh, device=device, dtype=sdt).repeat_interleave(kw) * dilation
    tap_j = torch.arange(kw, device=device, dtype=sdt).repeat(kh) * dilation
    y = base_y[None, None, :] + tap_i[None, :, None] + off[:, :, 0]
    x = base_x[None, None, :] + tap_j[None, :, None] + off[:, :, 1]
    # grid_sample(align_corners=False) maps a normalised g to pixel (g + 1) * size / 2 - 0.5, so
    # pixel p is g = (2p + 1) / size - 1. padding_mode="zeros" gives exactly the kernel's rule:
    # corners outside the map contribute 0.
    grid = torch.stack(((2.0 * x + 1.0) / width - 1.0, (2.0 * y + 1.0) / height - 1.0), dim=-1)  # [B, K, L, 2]
    sampled = F.grid_sample(input.to(sdt), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled = sampled * mask.to(sdt).reshape(batch, 1, taps, n_loc)  # [B, Cin, K, L]
    cols = sampled.to(input.dtype).reshape(batch, cin * taps, n_loc)
    # weight.view(Cout, Cin*K) has the same (channel, tap) order as cols.
    out = torch.matmul(weight.reshape(cout, cin * taps), cols)  # [B, Cout, L]
    if bias is not None:
        out = out + bias.to(out.dtype)[None, :, None]
    return out.reshape(batch, cout, out_h, out_w)


class ModulatedDeformConv2d(nn.Module):
    """DCNv2 layer with ``weight [Cout, Cin, k, k]`` and optional ``bias [Cout]``.

    ``forward(input [B,Cin,H,W], offset [B,2k²,Ho,Wo], mask [B,k²,Ho,Wo]) -> [B,Cout,Ho,Wo]``.
    Offset and mask come from outside (DyHead computes them once per level and shares them).
    ``reinterpret_oversized`` is forwarded to :func:`modulated_deform_conv2d` on every call unless
    the call overrides it.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        bias: bool = True,
        reinterpret_oversized: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.reinterpret_oversized = reinterpret_oversized
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same default as the official layer: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), zero bias.
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size**2)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, input: Tensor, offset: Tensor, mask: Tensor, reinterpret_oversized: bool | None = None) -> Tensor:
        return modulated_deform_conv2d(
            input,
            offset,
            mask,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            reinterpret_oversized=self.reinterpret_oversized if reinterpret_oversized is None else reinterpret_oversized,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, "
            f"reinterpret_oversized={self.reinterpret_oversized}"
        )

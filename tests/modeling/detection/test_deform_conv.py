"""Modulated deformable convolution against F.conv2d and a scalar float64 transliteration."""

import math

import pytest
import torch
import torch.nn.functional as F

from fibervl.modeling.detection.deform_conv import ModulatedDeformConv2d, modulated_deform_conv2d


def _bilinear_zero(img, y, x):
    """One channel plane [H, W] sampled at (y, x); corners outside count 0 (the CUDA rule)."""
    height, width = img.shape
    if not (-1 < y < height and -1 < x < width):
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    val = 0.0
    for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        for xx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            if 0 <= yy < height and 0 <= xx < width:
                val += wy * wx * float(img[yy, xx])
    return val


def _reference(inp, offset, mask, weight, bias, stride, pad, dil):
    """Scalar float64 DCNv2 reading offset/mask through flat per-element indices like the kernel."""
    inp, offset, mask, weight = (t.double() for t in (inp, offset, mask, weight))
    batch, cin, height, width = inp.shape
    cout, _, kh, kw = weight.shape
    ho = (height + 2 * pad - (dil * (kh - 1) + 1)) // stride + 1
    wo = (width + 2 * pad - (dil * (kw - 1) + 1)) // stride + 1
    out = torch.zeros(batch, cout, ho, wo, dtype=torch.float64)
    for b in range(batch):
        off_flat = offset[b].reshape(-1)
        msk_flat = mask[b].reshape(-1)
        cols = torch.zeros(cin, kh * kw, ho, wo, dtype=torch.float64)
        for i in range(kh):
            for j in range(kw):
                k = i * kw + j
                for h in range(ho):
                    for w in range(wo):
                        loc = h * wo + w
                        dy = float(off_flat[(2 * k) * ho * wo + loc])
                        dx = float(off_flat[(2 * k + 1) * ho * wo + loc])
                        m = float(msk_flat[k * ho * wo + loc])
                        y = h * stride - pad + i * dil + dy
                        x = w * stride - pad + j * dil + dx
                        for c in range(cin):
                            cols[c, k, h, w] = m * _bilinear_zero(inp[b, c], y, x)
        out[b] = torch.einsum("ock,ckhw->ohw", weight.reshape(cout, cin, kh * kw), cols)
        if bias is not None:
            out[b] += bias.double()[:, None, None]
    return out


@pytest.mark.parametrize("size", [(16, 20), (17, 13), (9, 11), (8, 10)])
@pytest.mark.parametrize("stride", [1, 2])
def test_zero_offset_unit_mask_equals_conv2d(size, stride):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, *size, generator=gen)
    w = torch.randn(6, 8, 3, 3, generator=gen)
    b = torch.randn(6, generator=gen)
    ref = F.conv2d(x, w, b, stride=stride, padding=1)
    ho, wo = ref.shape[-2:]
    out = modulated_deform_conv2d(
        x, torch.zeros(2, 18, ho, wo), torch.ones(2, 9, ho, wo), w, b, stride=stride, padding=1
    )
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)


def test_dilation_and_no_bias_equal_conv2d():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 12, 11, generator=gen)
    w = torch.randn(5, 4, 3, 3, generator=gen)
    ref = F.conv2d(x, w, None, stride=1, padding=2, dilation=2)
    out = modulated_deform_conv2d(x, torch.zeros(1, 18, *ref.shape[-2:]), torch.ones(1, 9, *ref.shape[-2:]), w,
                                  None, stride=1, padding=2, dilation=2)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_integer_offsets_equal_shifted_conv(stride):
    # dy=+1, dx=-2 everywhere samples input[y+1, x-2]: a conv of the shifted, zero-extended input.
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 13, 14, generator=gen)
    w = torch.randn(7, 5, 3, 3, generator=gen)
    b = torch.randn(7, generator=gen)
    # Shift on a zero-extended canvas: a padding position (y=-1) still reads input row 0 after dy=+1.
    ext = F.pad(x, (4, 4, 4, 4))
    shifted = torch.zeros_like(ext)
    shifted[:, :, :-1, 2:] = ext[:, :, 1:, :-2]
    region = shifted[:, :, 3 : 3 + 13 + 2, 3 : 3 + 14 + 2]  # original coordinates -1 .. H (W)
    ref = F.conv2d(region, 0.5 * w, b, stride=stride, padding=0)
    ho, wo = ref.shape[-2:]
    offset = torch.zeros(2, 18, ho, wo)
    offset[:, 0::2] = 1.0
    offset[:, 1::2] = -2.0
    out = modulated_deform_conv2d(x, offset, torch.full((2, 9, ho, wo), 0.5), w, b, stride=stride, padding=1)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)


def test_channel_order_dy_then_dx():
    # Only tap 4 (centre) is non-zero; dy = 1 on channel 8, dx = 0 on channel 9: output = input below.
    x = torch.arange(30.0).reshape(1, 1, 5, 6)
    w = torch.zeros(1, 1, 3, 3)
    w[0, 0, 1, 1] = 1.0
    offset = torch.zeros(1, 18, 5, 6)
    offset[:, 8] = 1.0
    out = modulated_deform_conv2d(x, offset, torch.ones(1, 9, 5, 6), w, None, padding=1)
    expected = torch.zeros(1, 1, 5, 6)
    expected[..., :4, :] = x[..., 1:, :]
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(
    "in_hw, stride, off_hw",
    [
        ((6, 7), 1, (6, 7)),  # ordinary case
        ((9, 11), 2, (5, 6)),  # stride 2
        ((5, 6), 1, (7, 8)),  # oversized offset map: raw-pointer reinterpretation
    ],
)
def test_fractional_offsets_match_float64_reference(in_hw, stride, off_hw):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, *in_hw, generator=gen)
    w = torch.randn(4, 3, 3, 3, generator=gen)
    b = torch.randn(4, generator=gen)
    # offsets up to several pixels so that samples leave the map on every side
    offset = 2.5 * torch.randn(2, 18, *off_hw, generator=gen)
    mask = torch.rand(2, 9, *off_hw, generator=gen)
    ref = _reference(x, offset, mask, w, b, stride, 1, 1)
    out = modulated_deform_conv2d(x, offset, mask, w, b, stride=stride, padding=1, reinterpret_oversized=True)
    assert out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=0)


def test_reinterpretation_differs_from_cropping():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 3, 5, 6, generator=gen)
    w = torch.randn(4, 3, 3, 3, generator=gen)
    offset = torch.randn(1, 18, 7, 8, generator=gen)
    mask = torch.rand(1, 9, 7, 8, generator=gen)
    raw = modulated_deform_conv2d(x, offset, mask, w, padding=1, reinterpret_oversized=True)
    cropped = modulated_deform_conv2d(x, offset[..., :5, :6], mask[..., :5, :6], w, padding=1)
    assert (raw - cropped).abs().max() > 0.1


def test_offset_size_mismatch_raises_without_flag():
    x = torch.randn(1, 3, 5, 6)
    w = torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="reinterpret_oversized"):
        modulated_deform_conv2d(x, torch.zeros(1, 18, 7, 8), torch.ones(1, 9, 7, 8), w, padding=1)
    with pytest.raises(ValueError, match="smaller than the output"):
        modulated_deform_conv2d(x, torch.zeros(1, 18, 4, 4), torch.ones(1, 9, 4, 4), w, padding=1,
                                reinterpret_oversized=True)
    with pytest.raises(ValueError, match="offset must be"):
        modulated_deform_conv2d(x, torch.zeros(1, 17, 5, 6), torch.ones(1, 9, 5, 6), w, padding=1)
    with pytest.raises(ValueError, match="input channels"):
        modulated_deform_conv2d(x, torch.zeros(1, 18, 5, 6), torch.ones(1, 9, 5, 6), torch.randn(4, 2, 3, 3),
                                padding=1)


def test_gradients_flow_and_match_finite_differences():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 2, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    # fractional offsets kept away from integer crossings so the piecewise-linear sampler is smooth
    offset = (0.3 + 0.4 * torch.rand(1, 18, 5, 5, generator=gen, dtype=torch.float64)).requires_grad_()
    mask = torch.rand(1, 9, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)

    def fn(x, offset, mask, w, b):
        return modulated_deform_conv2d(x, offset, mask, w, b, padding=1)

    assert torch.autograd.gradcheck(fn, (x, offset, mask, w, b), eps=1e-6, atol=1e-5)
    out = fn(x, offset, mask, w, b)
    out.square().sum().backward()
    for t in (x, offset, mask, w, b):
        assert t.grad is not None and t.grad.abs().sum() > 0


def test_module_and_bf16_autocast():
    torch.manual_seed(0)
    conv = ModulatedDeformConv2d(8, 6, 3, stride=1, padding=1)
    x = torch.randn(2, 8, 10, 12)
    offset = 0.5 * torch.randn(2, 18, 10, 12)
    mask = torch.rand(2, 9, 10, 12)
    ref = conv(x, offset, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x, offset, mask)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()
    out.float().sum().backward()
    assert conv.weight.grad is not None
    assert "reinterpret_oversized=False" in repr(conv)

"""count_flops counts attention on the CPU, where torch's counter has no formula for the fused kernel."""

import torch
import torch.nn.functional as F

from fibervl.modeling.flops import count_flops
from fibervl.modeling.fiber import FiberModel
from fibervl.testing.configs import micro_config


def test_attention_counts_its_two_matmuls():
    b, h, n, m, d = 2, 3, 7, 5, 4
    q, k, v = torch.randn(b, h, n, d), torch.randn(b, h, m, d), torch.randn(b, h, m, d)
    # scores q k^T and the weighted sum of v: 2 FLOPs per multiply-add, each b*h*n*m*d of them
    assert count_flops(F.scaled_dot_product_attention, q, k, v) == 2 * (2 * b * h * n * m * d)


def test_a_fused_forward_counts_its_attention(monkeypatch):
    torch.manual_seed(0)
    model = FiberModel(micro_config()).eval()
    size = model.config.vision.image_size
    inputs = (torch.randn(1, 3, size, size), torch.full((1, 6), 5), torch.ones(1, 6, dtype=torch.long))
    with_attention = count_flops(model.fuse, *inputs)
    # the same forward with every attention replaced by zeros: the same linear layers, no attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, k, v, **kw: q.new_zeros(*q.shape[:-1], v.shape[-1]))
    without_attention = count_flops(model.fuse, *inputs)
    assert with_attention > without_attention > 0

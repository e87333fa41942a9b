"""FLOP counting that sees attention.

``torch.utils.flop_counter.FlopCounterMode`` has a formula for the CUDA attention kernels but
none for the CPU's fused kernel (``_scaled_dot_product_flash_attention_for_cpu``), so on the
CPU every ``F.scaled_dot_product_attention`` counted as 0 FLOPs: fiber-base's fused forward came
to 210.4 GFLOP instead of 222.1 (the 11.8 of its window, text and cross attention missing).
Counting with attention on the math path, where it is two batched matmuls, gives the full count
on any device.
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs of one call ``fn(*args, **kwargs)`` (no grad; a multiply-add is 2 FLOPs), attention
    included."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())

"""Feature pyramid of the official fine-grained FIBER model (``SWINT-FPN-RETINANET``).

Three backbone stage maps (strides 8, 16, 32) become five levels P3..P7:

* lateral ("inner") 1x1 convs with bias, one per stage;
* top-down path: the coarser merged map is upsampled with *nearest* interpolation to the lateral's
  size (only when sizes differ) and added;
* output ("layer") 3x3 convs, padding 1, with bias;
* P6 = conv3x3 stride 2 on P5 (the FPN output, as the official ``LastLevelP6P7`` does when its input
  channel count equals the output's), P7 = conv3x3 stride 2 on relu(P6).

No normalisation and no activation anywhere else, as in the official config.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FPN"]


class FPN(nn.Module):
    """``forward([C3, C4, C5]) -> [P3, P4, P5, P6, P7]``.

    Args:
        in_channels: channels of the three stage maps, finest first (base: 256, 512, 1024).
        out_channels: channels of every pyramid level (base: 256).

    Shapes: ``C_i [B, in_channels[i], H_i, W_i]`` -> ``P_l [B, out_channels, h_l, w_l]`` with
    ``(h_l, w_l) = (H_i, W_i)`` for P3..P5 and each of P6, P7 half (rounded up) of the level before.
    """

    def __init__(self, in_channels: Sequence[int] = (256, 512, 1024), out_channels: int = 256) -> None:
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(f"FPN expects three stage channel counts (strides 8/16/32), got {list(in_channels)}")
        self.in_channels = tuple(int(c) for c in in_channels)
        self.out_channels = out_channels
        self.inner = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in self.in_channels)
        self.layer = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in self.in_channels)
        self.p6 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                # official conv_with_kaiming_uniform / LastLevelP6P7 init
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.zeros_(conv.bias)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != 3:
            raise ValueError(f"FPN expects 3 stage maps (strides 8, 16, 32), got {len(features)}")
        for i, (f, c) in enumerate(zip(features, self.in_channels)):
            if f.dim() != 4 or f.shape[1] != c:
                raise ValueError(f"stage map {i} must be [B, {c}, H, W], got {tuple(f.shape)}")
        last_inner = self.inner[-1](features[-1])
        results = [self.layer[-1](last_inner)]
        for i in (1, 0):
            lateral = self.inner[i](features[i])
            if lateral.shape[-2:] != last_inner.shape[-2:]:
                top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            else:
                top_down = last_inner
            last_inner = lateral + top_down
            results.insert(0, self.layer[i](last_inner))
        p6 = self.p6(results[-1])
        p7 = self.p7(F.relu(p6))
        return results + [p6, p7]

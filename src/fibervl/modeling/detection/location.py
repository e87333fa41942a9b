"""A text-conditioned prior over places for the grounding logits (not official FIBER).

The pyramid's convolutions see neighbourhoods, not places, so "the black diamond on the left"
scores both black diamonds alike: in the default run's REC model, swapping "left" and "right"
left the top box where it was for 101 of 115 position expressions, which stayed at chance (53.0 %;
docs/results.md). :class:`LocationPrior` gives every location a logit term that the expression
chooses::

    prior[b, l] = code(l) . (W @ mean_t text[b, t] + c)      # [B, H*W]

``code(l)`` describes the centre of location ``l`` in its map (:func:`location_code`), the mean
runs over the real tokens, and ``W``, ``c`` start at zero, so a detector computes what it did
until the prior is learnt. The detector adds the same term to every token's logit at a location:
it moves which box an expression picks, not which words a box matches. Places are fractions of
the padded feature map; within one image their order is the image's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["LOCATION_FREQUENCIES", "location_code", "LocationPrior"]

# multiples of pi: the coarsest halves the map, the finest tells neighbouring cells of 16 apart
LOCATION_FREQUENCIES = (0.5, 1.0, 2.0, 4.0)
LOCATION_CODE_DIM = 2 + 4 * len(LOCATION_FREQUENCIES)


def location_code(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """``[H*W, LOCATION_CODE_DIM]`` float32, row-major (h, w): for each location's centre (x, y)
    in [0, 1], ``x - 1/2`` and ``y - 1/2`` (a place's order: "left" is a smaller x) and sin / cos
    of ``pi * f * x`` and ``pi * f * y`` for ``f`` in :data:`LOCATION_FREQUENCIES` (bands, corners)."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    x, y = x.reshape(-1, 1), y.reshape(-1, 1)
    freqs = torch.tensor(LOCATION_FREQUENCIES, device=device) * math.pi
    angles = torch.cat([x * freqs, y * freqs], dim=1)
    return torch.cat([x - 0.5, y - 0.5, angles.sin(), angles.cos()], dim=1)


class LocationPrior(nn.Module):
    """``forward(text_hidden [B, T, D], text_mask [B, T], sizes) -> [[B, H*W], ...]``: the
    expression's logit term for each location of each ``(height, width)`` map of ``sizes``
    (module docstring); the expression's weights are computed once for all maps.
    ``weight [LOCATION_CODE_DIM, D]`` and ``bias [LOCATION_CODE_DIM]`` start at zero."""

    def __init__(self, text_dim: int) -> None:
        super().__init__()
        # zeros, not nn.Linear: no draw from the random stream, so the weights built after this
        # module start where they did without it
        self.weight = nn.Parameter(torch.zeros(LOCATION_CODE_DIM, text_dim))
        self.bias = nn.Parameter(torch.zeros(LOCATION_CODE_DIM))

    def forward(self, text_hidden: Tensor, text_mask: Tensor, sizes: list[tuple[int, int]]) -> list[Tensor]:
        real = text_mask[..., None].to(text_hidden.dtype)
        pooled = (text_hidden * real).sum(1) / real.sum(1).clamp_min(1)  # [B, D]
        place_weights = pooled @ self.weight.t().to(pooled.dtype) + self.bias.to(pooled.dtype)  # [B, P]
        return [place_weights @ location_code(h, w, text_hidden.device).to(place_weights.dtype).t() for h, w in sizes]

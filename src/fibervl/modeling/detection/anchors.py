"""One square anchor per location per pyramid level (official ``AnchorGenerator``, aspect ratio 1).

For stride ``s`` and size ``S`` the anchor at grid cell ``(i, j)`` is centred at
``(j s + (s - 1) / 2, i s + (s - 1) / 2)`` with legacy width ``S`` (x2 - x1 = S - 1):
``[j s + (s-1)/2 - (S-1)/2, i s + (s-1)/2 - (S-1)/2, j s + (s-1)/2 + (S-1)/2, i s + (s-1)/2 + (S-1)/2]``.
Locations are in row-major (i, j) order, matching the head's flattened outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["AnchorGenerator"]


class AnchorGenerator:
    """``grid_anchors([(H_l, W_l), ...]) -> [Tensor [H_l*W_l, 4], ...]`` (xyxy, float32).

    Args:
        strides: per-level strides (official: 8, 16, 32, 64, 128).
        sizes: per-level anchor sizes (official ``ANCHOR_SIZES``: 64 ... 1024, i.e. 8 x stride).
    """

    def __init__(
        self, strides: Sequence[int] = (8, 16, 32, 64, 128), sizes: Sequence[float] = (64, 128, 256, 512, 1024)
    ) -> None:
        if len(strides) != len(sizes):
            raise ValueError(f"{len(strides)} strides but {len(sizes)} anchor sizes")
        self.strides = tuple(int(s) for s in strides)
        self.sizes = tuple(float(s) for s in sizes)

    def cell_anchor(self, level: int) -> Tensor:
        """The ``[4]`` anchor of cell (0, 0) at ``level`` (official ``cell_anchors[level]``)."""
        s, size = self.strides[level], self.sizes[level]
        c = (s - 1) / 2.0
        r = (size - 1) / 2.0
        return torch.tensor([c - r, c - r, c + r, c + r], dtype=torch.float32)

    def grid_anchors(self, grid_sizes: Sequence[tuple[int, int]], device: torch.device | str = "cpu") -> list[Tensor]:
        if len(grid_sizes) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} grid sizes, got {len(grid_sizes)}")
        out = []
        for level, (h, w) in enumerate(grid_sizes):
            s = self.strides[level]
            ys = torch.arange(h, dtype=torch.float32, device=device) * s
            xs = torch.arange(w, dtype=torch.float32, device=device) * s
            sy, sx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack((sx, sy, sx, sy), dim=-1).reshape(-1, 4)
            out.append(shifts + self.cell_anchor(level).to(device))
        return out

    def __call__(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Anchors for feature maps ``[B, C, H_l, W_l]`` (the same for every image of the batch)."""
        return self.grid_anchors([tuple(f.shape[-2:]) for f in features], device=features[0].device)

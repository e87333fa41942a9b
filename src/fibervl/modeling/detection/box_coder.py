"""Anchor-relative box encoding of the official ATSS/GLIP/FIBER head.

Legacy pixel convention (width = x2 - x1 + 1) and weights ``(wx, wy, ww, wh) = (10, 10, 5, 5)``:

``encode``: ``dx = wx (gx - ax) / aw``, ``dy = wy (gy - ay) / ah``, ``dw = ww log(gw / aw)``,
``dh = wh log(gh / ah)`` with centres ``(x1 + x2) / 2``.

``decode``: inverse, with ``dw, dh`` clamped at ``log(1000 / 16)`` before ``exp``; the box is
``cx -/+ 0.5 (w - 1)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["BoxCoder"]


class BoxCoder:
    """``encode(gt [N,4], anchors [N,4]) -> deltas [N,4]``; ``decode(deltas [N,4], anchors [N,4]) -> boxes [N,4]``."""

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        bbox_xform_clip: float = math.log(1000.0 / 16),
        pixel_offset: float = 1.0,
    ) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = bbox_xform_clip
        self.pixel_offset = pixel_offset

    def _geometry(self, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        w = boxes[:, 2] - boxes[:, 0] + self.pixel_offset
        h = boxes[:, 3] - boxes[:, 1] + self.pixel_offset
        return w, h, (boxes[:, 2] + boxes[:, 0]) / 2, (boxes[:, 3] + boxes[:, 1]) / 2

    def encode(self, gt_boxes: Tensor, anchors: Tensor) -> Tensor:
        if gt_boxes.shape != anchors.shape or gt_boxes.dim() != 2 or gt_boxes.shape[-1] != 4:
            raise ValueError(f"encode expects two [N, 4] tensors, got {tuple(gt_boxes.shape)} and {tuple(anchors.shape)}")
        wx, wy, ww, wh = self.weights
        aw, ah, ax, ay = self._geometry(anchors)
        gw, gh, gx, gy = self._geometry(gt_boxes)
        if gt_boxes.numel() and ((gw <= 0).any() or (gh <= 0).any()):
            raise ValueError("encode: a gt box has non-positive width or height")
        return torch.stack(
            (wx * (gx - ax) / aw, wy * (gy - ay) / ah, ww * torch.log(gw / aw), wh * torch.log(gh / ah)), dim=1
        )

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        if deltas.dim() != 2 or deltas.shape[-1] != 4 or anchors.shape != deltas.shape:
            raise ValueError(f"decode expects two [N, 4] tensors, got {tuple(deltas.shape)} and {tuple(anchors.shape)}")
        anchors = anchors.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        aw, ah, ax, ay = self._geometry(anchors)
        dx = deltas[:, 0] / wx
        dy = deltas[:, 1] / wy
        dw = (deltas[:, 2] / ww).clamp(max=self.bbox_xform_clip)
        dh = (deltas[:, 3] / wh).clamp(max=self.bbox_xform_clip)
        cx = dx * aw + ax
        cy = dy * ah + ay
        w = torch.exp(dw) * aw
        h = torch.exp(dh) * ah
        o = self.pixel_offset
        return torch.stack((cx - 0.5 * (w - o), cy - 0.5 * (h - o), cx + 0.5 * (w - o), cy + 0.5 * (h - o)), dim=1)

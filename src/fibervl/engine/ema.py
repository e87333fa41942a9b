"""Exponential moving average of model weights.

``shadow = decay * shadow + (1 - decay) * param`` after every optimizer step, for floating-point
parameters and buffers (integer buffers such as queue pointers are copied). With ``warmup`` the
effective decay is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so early averages are
not dominated by the random initialisation (the timm/TF convention). The shadow weights live on the
model's device in fp32 and are saved in checkpoints as ``ema.safetensors``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class ModelEMA:
    """EMA of ``model``'s state dict (tied tensors handled once, by name)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            k: (v.detach().float().clone() if v.is_floating_point() else v.detach().clone())
            for k, v in model.state_dict().items()
        }

    def current_decay(self) -> float:
        if self.warmup:
            return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (call after ``optimizer.step``)."""
        d = self.current_decay()
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if v.is_floating_point():
                s.mul_(d).add_(v.detach().float(), alpha=1.0 - d)
            else:
                s.copy_(v)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Shadow weights (tensors only: goes to a safetensors file)."""
        return {k: v.contiguous() for k, v in self.shadow.items()}

    def meta(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        missing = set(self.shadow) - set(tensors)
        unexpected = set(tensors) - set(self.shadow)
        if missing or unexpected:
            raise ValueError(f"EMA weights do not match the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        for k, v in tensors.items():
            self.shadow[k].copy_(v)
        self.num_updates = int(meta["num_updates"])

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s weights with the averages."""
        sd = model.state_dict()
        for k, v in sd.items():
            v.copy_(self.shadow[k].to(v.dtype))

    @contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily run ``model`` with EMA weights (e.g. for evaluation); restored on exit."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    v.copy_(backup[k])

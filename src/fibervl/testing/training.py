"""A few optimisation steps on one batch, for tests that a task's loss falls."""

from __future__ import annotations

import torch


def train_losses(model, task, batch: dict, steps: int = 12, lr: float = 2e-3) -> list[float]:
    """AdamW on ``task.training_step(model, batch)["loss"]`` for ``steps`` steps; the losses."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    out = []
    for _ in range(steps):
        loss = task.training_step(model, batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(loss.item())
    return out

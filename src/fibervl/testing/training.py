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


def pair_batch(n: int = 6, seed: int = 0) -> dict:
    """A batch of ``n`` (<= 6) random 64 px image-text pairs as the pre-training tasks take it:
    images [n, 3, 64, 64], input_ids / attention_mask [n, 8] (bos 0, eos 2, pad 1; the second
    text is shorter, padded), image_ids [n] with images 0 and 1 the same image (a duplicate that
    ITC must not count as a negative)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 99, (n, 8), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    ids[1, 5:] = 1
    ids[1, 4] = 2
    return {"images": torch.randn(n, 3, 64, 64, generator=g), "input_ids": ids,
            "attention_mask": ids.ne(1).long(), "image_ids": torch.tensor([0, 0, 1, 2, 3, 4])[:n]}

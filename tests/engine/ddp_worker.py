"""Subprocess entry points for the multi-process tests (test_ddp.py).

    torchrun --nproc_per_node 2 ddp_worker.py coarse OUT_DIR     # or plain python: world size 1

``coarse``: two coarse pre-training steps of fiber-tiny on one global batch of 8 pairs, each rank
taking its rows; every rank saves the negatives it drew, its losses and the gradients (averaged
over ranks by DDP).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from fibervl.config import get_preset
from fibervl.engine import distributed as D
from fibervl.modeling.fiber import FiberModel
from fibervl.tasks import pretrain_coarse
from fibervl.tasks.pretrain_coarse import CoarseObjectives, CoarsePretrainTask

GLOBAL_BATCH = 8
BOS, PAD, EOS = 0, 1, 2


def coarse_config():
    """fiber-tiny with the coarse heads only: DDP (without find_unused_parameters) needs every
    parameter to get a gradient, and the VQA and NLVR2 heads get none here."""
    return get_preset("fiber-tiny").replace(heads=("itc", "itm", "mlm"))


def coarse_global_batch() -> dict:
    """8 fiber-tiny pairs. Rows 0 and 7, and rows 3 and 4, show one image (split between the
    ranks of a world of 2, so the exclusion of same-image negatives crosses ranks); the second
    half's texts are longer, as a collator padding to the longest text of its rank makes them."""
    cfg = coarse_config()
    g = torch.Generator().manual_seed(0)
    size = cfg.vision.image_size
    images = torch.randn(GLOBAL_BATCH, 3, size, size, generator=g)
    images[7], images[4] = images[0], images[3]
    lengths = [6, 9, 7, 5, 12, 14, 10, 13]
    ids = torch.full((GLOBAL_BATCH, max(lengths)), PAD)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(5, cfg.text.vocab_size - 1, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = BOS, EOS
    return {"images": images, "input_ids": ids, "attention_mask": ids.ne(PAD).long(),
            "image_ids": torch.tensor([0, 1, 2, 3, 3, 5, 6, 0])}


def rank_rows(batch: dict, rank: int, world: int) -> dict:
    """This rank's contiguous rows, texts cut to their own longest (as its collator would)."""
    n = GLOBAL_BATCH // world
    part = {k: v[rank * n : (rank + 1) * n] for k, v in batch.items()}
    length = int(part["attention_mask"].sum(1).max())
    part["input_ids"], part["attention_mask"] = part["input_ids"][:, :length], part["attention_mask"][:, :length]
    return part


class Step(nn.Module):
    """The trainer's arrangement: one DDP forward runs the task's whole step."""

    def __init__(self, model: nn.Module, task: CoarsePretrainTask):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, batch: dict) -> dict:
        return self.task.training_step(self.model, batch)


def coarse_steps(out: Path, steps: int = 2) -> None:
    """Run ``steps`` coarse steps (SGD between them) and save what each rank saw."""
    D.init_distributed("cpu")
    rank, world = D.get_rank(), D.get_world_size()
    torch.set_num_threads(1)
    drawn: list[torch.Tensor] = []
    real = pretrain_coarse.sample_hard_negatives
    pretrain_coarse.sample_hard_negatives = lambda *a, **k: drawn.append(real(*a, **k)) or drawn[-1]
    cfg = coarse_config()
    torch.manual_seed(0)
    model = FiberModel(cfg).train()
    task = CoarsePretrainTask(CoarseObjectives(queue_size=16), cfg.hidden_size, cfg.text.vocab_size,
                              cfg.text.mask_token_id, (BOS, EOS, PAD), seed=11)
    step = Step(model, task)
    runner = DDP(step) if D.is_distributed() else step
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    batch = rank_rows(coarse_global_batch(), rank, world)
    saved: dict[str, torch.Tensor] = {}
    for i in range(steps):
        logs = runner(batch)
        opt.zero_grad()
        logs["loss"].backward()
        saved.update({f"{k}.{i}": logs[k].detach() for k in ("loss", "itc", "itm", "mlm")})
        saved[f"neg_text.{i}"], saved[f"neg_image.{i}"] = drawn[-2], drawn[-1]
        saved.update({f"grad.{n}.{i}": p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        opt.step()
    torch.save(saved, out / f"coarse_rank{rank}_world{world}.pt")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "coarse":
        coarse_steps(Path(sys.argv[2]))
        D.destroy_distributed()
    else:
        raise SystemExit(f"unknown mode {mode}")

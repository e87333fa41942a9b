"""Subprocess entry points for the multi-process tests (test_ddp.py).

    torchrun --nproc_per_node 2 ddp_worker.py coarse OUT_DIR     # or plain python: world size 1
    torchrun --nproc_per_node 2 ddp_worker.py train key=value ...  # toy regression (TrainConfig)

``coarse``: two coarse pre-training steps of fiber-tiny on one global batch of 8 pairs, each rank
taking its rows, with the word-swap term on (two groups of token ids as its words); every rank
saves the negatives it drew, its losses and the gradients (averaged over ranks by DDP).
``train``: a toy regression run with dropout and data noise (both drawn from each rank's global RNG);
with ``DIE_AT_MICRO_STEP=k`` and ``DIE_RANK=r``, rank ``r`` SIGKILLs
itself inside its ``k``-th micro-step since the process started (set it for the first run only),
after writing the time to the file ``DIE_STAMP``.
"""

from __future__ import annotations

import dataclasses

import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from engine_toys import RegressionData, RegressionTask, ToyModel
from fibervl.config import get_preset
from fibervl.engine import distributed as D
from fibervl.engine.config import parse_cli
from fibervl.engine.trainer import Trainer, TrainConfig
from fibervl.modeling.fiber import FiberModel
from fibervl.tasks import pretrain_coarse
from fibervl.tasks.pretrain_coarse import CoarseObjectives, CoarsePretrainTask
from fibervl.testing.workers import finish_worker

GLOBAL_BATCH = 8
BOS, PAD, EOS = 0, 1, 2
# Two word-swap groups covering most of the vocabulary: every random caption can swap.
SWAP_GROUPS = [[f"w{i}" for i in range(5, 1000)], [f"w{i}" for i in range(1000, 2040)]]


class IdTokenizer:
    """Spells token id ``i`` as the word ``wI`` (spaced forms only), enough for a WordSwapTable."""

    vocab_size = 2048

    def encode(self, text: str):
        word = text.strip()
        ids = [BOS, int(word[1:]), EOS] if text.startswith(" ") and word[1:].isdigit() else [BOS, 3, 3, EOS]
        return ids, []

    def token_to_id(self, token: str):
        return {"<s>": BOS, "</s>": EOS}.get(token)


def coarse_config():
    """fiber-tiny with the coarse heads only: DDP (without find_unused_parameters) needs every
    parameter to get a gradient, and the VQA and NLVR2 heads get none here."""
    # The all-Swin tower (conv_stages=0): the hybrid tower's BatchNorms normalise over each
    # rank's own images, so a 2-rank step differs from a 1-rank one by design (plain DDP), and
    # this check is about what the coarse step draws and sums, not about batch statistics.
    cfg = get_preset("fiber-tiny")
    vision = dataclasses.replace(cfg.vision, conv_stages=0, final_norm=True)
    return cfg.replace(vision=vision, heads=("itc", "itm", "mlm"))


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
    objectives = CoarseObjectives(queue_size=16, itm_swap=1.0, swap_words=SWAP_GROUPS)
    task = CoarsePretrainTask(objectives, cfg.hidden_size, cfg.text.vocab_size, cfg.text.mask_token_id,
                              (BOS, EOS, PAD), seed=11, swap_table=objectives.swap_table(IdTokenizer()))
    step = Step(model, task)
    runner = DDP(step) if D.is_distributed() else step
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    batch = rank_rows(coarse_global_batch(), rank, world)
    saved: dict[str, torch.Tensor] = {}
    for i in range(steps):
        logs = runner(batch)
        opt.zero_grad()
        logs["loss"].backward()
        saved.update({f"{k}.{i}": logs[k].detach() for k in ("loss", "itc", "itm", "mlm", "itm_swap")})
        saved[f"neg_text.{i}"], saved[f"neg_image.{i}"] = drawn[-2], drawn[-1]
        saved.update({f"grad.{n}.{i}": p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        opt.step()
    torch.save(saved, out / f"coarse_rank{rank}_world{world}.pt")


def die_inside(task: RegressionTask, at_step: int, rank: int, stamp: Path) -> RegressionTask:
    """Make ``rank`` SIGKILL itself in its ``at_step``-th micro-step, mid-forward (its peer goes
    on into the step's collectives and finds nobody there); the time of death goes to ``stamp``."""
    real = task.training_step
    calls = 0

    def training_step(model, batch):
        nonlocal calls
        calls += 1
        if calls == at_step and D.get_rank() == rank:
            stamp.write_text(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        return real(model, batch)

    task.training_step = training_step
    return task


def train(argv: list[str]) -> None:
    cfg, flags = parse_cli(TrainConfig, argv)
    if flags["resume"]:
        cfg.resume = flags["resume"]
    torch.set_num_threads(1)
    task = RegressionTask()
    if "DIE_AT_MICRO_STEP" in os.environ:
        die_inside(task, int(os.environ["DIE_AT_MICRO_STEP"]), int(os.environ["DIE_RANK"]), Path(os.environ["DIE_STAMP"]))
    Trainer(cfg, ToyModel(dropout=0.2), task, RegressionData(noise=0.3)).fit()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "coarse":
        coarse_steps(Path(sys.argv[2]))
    elif mode == "train":
        train(sys.argv[2:])
    else:
        raise SystemExit(f"unknown mode {mode}")
    finish_worker()

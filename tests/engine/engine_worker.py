"""Subprocess entry point for the engine tests.

    python engine_worker.py regression key=value ...   # toy regression run (TrainConfig overrides)
    torchrun --nproc_per_node 2 engine_worker.py ddp OUT_DIR

Toy options come from environment variables: TOY_NOISE, TOY_DROPOUT, TOY_SLEEP, and
TOY_PAUSE_AT_CALL / TOY_PAUSE_FILE (see RegressionTask).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from engine_toys import DualEncoder, ITCTask, PairData, RegressionData, RegressionTask, ToyModel, env_float
from fibervl.engine import distributed as D
from fibervl.engine.config import parse_cli
from fibervl.engine.trainer import Trainer, TrainConfig
from fibervl.testing.workers import finish_worker


def run_regression(argv: list[str]) -> dict:
    cfg, flags = parse_cli(TrainConfig, argv)
    if flags["resume"]:
        cfg.resume = flags["resume"]
    torch.set_num_threads(1)
    model = ToyModel(dropout=env_float("TOY_DROPOUT", 0.0))
    task = RegressionTask(sleep_s=env_float("TOY_SLEEP", 0.0), pause_at_call=int(env_float("TOY_PAUSE_AT_CALL", 0)),
                          pause_file=os.environ.get("TOY_PAUSE_FILE", ""))
    data = RegressionData(noise=env_float("TOY_NOISE", 0.0))
    return Trainer(cfg, model, task, data).fit()


def gather_check(out: Path) -> None:
    """Rank r holds r + 1 rows (unequal sizes); record the gather and the gradient it returns."""
    rank, world = D.get_rank(), D.get_world_size()
    x = torch.full((rank + 1, 2), float(rank + 1), requires_grad=True)
    g = D.all_gather_with_grad(x)
    weights = torch.arange(g.numel(), dtype=torch.float32).reshape(g.shape)
    (g * weights).sum().backward()
    torch.save({"gathered": g.detach(), "grad": x.grad, "offset": D.rank_offset(rank + 1),
                "no_grad": D.all_gather_no_grad(x.detach() * 10)}, out / f"gather_rank{rank}_world{world}.pt")


def ddp_cases(out: Path) -> None:
    """Train the DDP comparison cases; the global batch does not depend on the world size.

    itc: ITC with global gathering and a feature queue, 8 pairs per step over all ranks.
    regression: 8 samples per step as (8 / world / 2) per rank x 2 accumulation micro-steps,
    with gradient clipping. Each rank saves its final weights (and task buffers).
    """
    D.init_distributed("cpu")
    world = D.get_world_size()
    torch.set_num_threads(1)
    gather_check(out)
    cases = {
        "itc": (DualEncoder(), ITCTask(queue_size=16), PairData(),
                [f"batch_size={8 // world}", "optim.lr=3e-2"]),
        "regression": (ToyModel(), RegressionTask(), RegressionData(),
                       [f"batch_size={4 // world}", "grad_accum_steps=2", "clip_grad_norm=0.5", "optim.lr=1e-2"]),
    }
    for kind, (model, task, data, extra) in cases.items():
        overrides = [f"run_dir={out / f'{kind}_world{world}'}", "max_steps=3", "schedule.warmup=0", "progress_bar=false",
                     "ckpt_every=null", "device=cpu", *extra]
        cfg, _ = parse_cli(TrainConfig, overrides)
        Trainer(cfg, model, task, data).fit()
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state.update({f"task.{k}": v.detach().clone() for k, v in task.state_dict().items()})
        torch.save(state, out / f"{kind}_rank{D.get_rank()}_world{world}.pt")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "regression":
        run_regression(sys.argv[2:])
    elif mode == "ddp":
        ddp_cases(Path(sys.argv[2]))
        finish_worker()
    else:
        raise SystemExit(f"unknown mode {mode}")

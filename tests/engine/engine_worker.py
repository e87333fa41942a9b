"""Subprocess entry point for the engine tests.

    python engine_worker.py regression key=value ...   # toy regression run (TrainConfig overrides)
    torchrun --nproc_per_node 2 engine_worker.py ddp OUT_DIR [itc|regression] key=value ...

Toy options come from environment variables: TOY_NOISE, TOY_DROPOUT, TOY_SLEEP.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from engine_toys import DualEncoder, ITCTask, PairData, RegressionData, RegressionTask, ToyModel, env_float
from fibervl.engine import distributed as D
from fibervl.engine.config import parse_cli
from fibervl.engine.trainer import Trainer, TrainConfig


def run_regression(argv: list[str]) -> dict:
    cfg, flags = parse_cli(TrainConfig, argv)
    if flags["resume"]:
        cfg.resume = flags["resume"]
    torch.set_num_threads(1)
    model = ToyModel(dropout=env_float("TOY_DROPOUT", 0.0))
    task = RegressionTask(sleep_s=env_float("TOY_SLEEP", 0.0))
    data = RegressionData(noise=env_float("TOY_NOISE", 0.0))
    return Trainer(cfg, model, task, data).fit()


def run_ddp(out: Path, kind: str, argv: list[str]) -> None:
    cfg, _ = parse_cli(TrainConfig, argv)
    torch.set_num_threads(1)
    if kind == "itc":
        model, task, data = DualEncoder(), ITCTask(queue_size=16), PairData()
    else:
        model, task, data = ToyModel(), RegressionTask(), RegressionData()
    Trainer(cfg, model, task, data).fit()
    rank = D.get_rank()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if isinstance(task, torch.nn.Module):
        state.update({f"task.{k}": v.detach().clone() for k, v in task.state_dict().items()})
    out.mkdir(parents=True, exist_ok=True)
    torch.save(state, out / f"{kind}_rank{rank}_world{D.get_world_size()}.pt")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "regression":
        run_regression(sys.argv[2:])
    elif mode == "ddp":
        run_ddp(Path(sys.argv[2]), sys.argv[3], sys.argv[4:])
        D.destroy_distributed()
    else:
        raise SystemExit(f"unknown mode {mode}")

"""torchrun worker of the engine's fault tests (two ranks, each saves what the test checks to
OUT_DIR/rank<r>.pt):

    torchrun --nproc_per_node 2 fault_worker.py OUT_DIR

1. rank 1 alone gets a NaN loss on call 4 (step 2's second micro-batch, whose backward would sync
   the gradients): both ranks must skip step 2 and go on;
2. rank 0's checkpoint write fails: both ranks must raise instead of waiting for each other.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import fibervl.engine.checkpoint as ckpt
from engine_toys import FaultyRegressionTask, IdRegressionData, ToyModel
from fibervl.engine import distributed as D
from fibervl.engine.config import parse_cli
from fibervl.engine.trainer import Trainer, TrainConfig
from fibervl.testing.workers import finish_worker


def config(run_dir: Path, *more: str) -> TrainConfig:
    cfg, _ = parse_cli(TrainConfig, [f"run_dir={run_dir}", "batch_size=4", "grad_accum_steps=2", "schedule.warmup=0",
                                     "optim.lr=1e-2", "progress_bar=false", "device=cpu", "log_every=1", *more])
    return cfg


def nan_on_one_rank(out: Path, rank: int) -> dict:
    task = FaultyRegressionTask(nan_loss_at={4} if rank == 1 else ())
    model = ToyModel()
    trainer = Trainer(config(out / "run", "max_steps=4", "ckpt_every=null"), model, task, IdRegressionData())
    summary = trainer.fit()
    w = {n: weights for n, _, weights in task.seen}
    return {
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "skipped_steps": summary["skipped_steps"],
        "adam_steps": int(trainer.optimizer.state[trainer._params[0]]["step"]),
        "step2_unchanged": all(torch.equal(w[3][k], w[5][k]) for k in w[3]),
        "step3_moved": not all(torch.equal(w[5][k], w[7][k]) for k in w[5]),
    }


def failed_write_on_rank0(out: Path, rank: int) -> dict:
    def disk_full(root, step, *args, **kwargs):
        raise ckpt.CheckpointError(f"could not write checkpoint {ckpt.step_dir_name(step)} (simulated full disk)")

    if rank == 0:
        ckpt.save_checkpoint = disk_full
    trainer = Trainer(config(out / "run_write", "max_steps=3", "ckpt_every=1"), ToyModel(), FaultyRegressionTask(),
                      IdRegressionData())
    try:
        trainer.fit()
    except ckpt.CheckpointError as e:
        return {"write_error": str(e), "write_error_step": trainer.step}
    return {"write_error": None}


if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    D.init_distributed("cpu")
    torch.set_num_threads(1)
    r = D.get_rank()
    result = nan_on_one_rank(out_dir, r)
    result.update(failed_write_on_rank0(out_dir, r))
    torch.save(result, out_dir / f"rank{r}.pt")
    finish_worker()

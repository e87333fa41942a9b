"""A non-finite loss or gradient never trains on silently: the step is skipped (no update), logged
with its loss terms and sample ids, counted, and too many in a row stop training."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine_toys import FaultyRegressionTask, IdRegressionData, ToyModel
from fibervl.engine.optim import OptimConfig, ScheduleConfig
from fibervl.engine.task import batch_sample_ids
from fibervl.engine.trainer import NonFiniteError, Trainer, TrainConfig

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"


def make_cfg(tmp_path: Path, name: str, **kw) -> TrainConfig:
    base = dict(run_dir=str(tmp_path / name), max_steps=8, batch_size=8, log_every=4, ckpt_every=None,
                progress_bar=False, optim=OptimConfig(lr=1e-2), schedule=ScheduleConfig(warmup=0))
    base.update(kw)
    return TrainConfig(**base)


def weights_at(task: FaultyRegressionTask, call: int) -> dict[str, torch.Tensor]:
    """The weights the forward of ``call`` saw, i.e. those after the step before it."""
    return next(w for n, _, w in task.seen if n == call)


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def final_state(run_dir: str, step: int) -> dict:
    return torch.load(Path(run_dir) / "checkpoints" / f"step_{step:08d}" / "state.pt", weights_only=True)


def test_nan_loss_skips_the_step_and_logs_terms_and_ids(tmp_path: Path) -> None:
    task = FaultyRegressionTask(nan_loss_at={3, 6})
    cfg = make_cfg(tmp_path, "run", ema_decay=0.5)
    model = ToyModel()
    out = Trainer(cfg, model, task, IdRegressionData()).fit()
    assert out["step"] == 8 and out["skipped_steps"] == 2
    # one micro-batch per step: call k is step k, and the forward of call k + 1 sees step k's result
    assert not same(weights_at(task, 2), weights_at(task, 3))  # ordinary steps move the weights
    assert same(weights_at(task, 3), weights_at(task, 4))  # step 3 changed nothing
    assert same(weights_at(task, 6), weights_at(task, 7))
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())

    log = (Path(cfg.run_dir) / "train.log").read_text()
    assert "step 3 skipped: non-finite loss; no update (1 in a row, limit 5; 1 skipped in this run)" in log
    ids3 = next(ids for n, ids, _ in task.seen if n == 3)
    line = next(x for x in log.splitlines() if "step 3 skipped: rank 0 micro-batch 1/1" in x)
    assert re.search(r"loss=nan running_loss=[0-9.]+; sample ids ", line), line
    assert line.endswith(f"sample ids {ids3}") and len(ids3) == 8 and ids3[0].startswith("s")
    assert "step 6 skipped: non-finite loss; no update (1 in a row, limit 5; 2 skipped in this run)" in log
    assert "training finished at step 8" in log

    # no optimizer step and no EMA update for the skipped steps; the schedule follows the step count
    state = final_state(cfg.run_dir, 8)
    assert int(state["optimizer"]["state"][0]["step"]) == 6
    assert state["scheduler"]["last_epoch"] == 8 and state["ema"]["num_updates"] == 6
    assert state["nonfinite"] == {"in_a_row": 0, "total": 2}
    metrics = [json.loads(x) for x in Path(cfg.run_dir, "metrics.jsonl").read_text().splitlines()]
    assert [(m["step"], m["skipped_steps"]) for m in metrics] == [(4, 1), (8, 2)]
    assert all(m["loss"] == m["loss"] for m in metrics)  # the interval's mean leaves the NaN out


@pytest.mark.parametrize("clip", [None, 0.5])
def test_nan_gradient_with_a_finite_loss_is_caught(tmp_path: Path, clip) -> None:
    # two micro-batches per step: step 2 is calls 3 and 4; call 3's loss is finite, its gradient NaN
    task = FaultyRegressionTask(nan_grad_at={3})
    cfg = make_cfg(tmp_path, "run", batch_size=4, grad_accum_steps=2, max_steps=4, clip_grad_norm=clip)
    model = ToyModel()
    out = Trainer(cfg, model, task, IdRegressionData()).fit()
    assert out["skipped_steps"] == 1
    assert same(weights_at(task, 3), weights_at(task, 5)) and not same(weights_at(task, 5), weights_at(task, 7))
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    log = (Path(cfg.run_dir) / "train.log").read_text()
    assert "step 2 skipped: non-finite gradient (norm nan); no update (1 in a row" in log
    for i, call in ((1, 3), (2, 4)):  # a bad gradient cannot be traced to one micro-batch: both are named
        ids = next(ids for n, ids, _ in task.seen if n == call)
        assert re.search(rf"step 2 skipped: rank 0 micro-batch {i}/2: loss=[0-9.e-]+ running_loss=[0-9.e-]+; "
                         rf"sample ids {re.escape(str(ids))}$", log, re.M), log
    assert int(final_state(cfg.run_dir, 4)["optimizer"]["state"][0]["step"]) == 3


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # the scaler skipped step 1
def test_fp16_leaves_gradients_to_the_grad_scaler(tmp_path: Path) -> None:
    """A NaN gradient under fp16 is the GradScaler's business (skip, lower the scale, not
    counted); a NaN loss is still a skipped, counted step."""
    task = FaultyRegressionTask(nan_loss_at={2}, nan_grad_at={4})
    cfg = make_cfg(tmp_path, "run", precision="fp16", max_steps=5)
    trainer = Trainer(cfg, ToyModel(), task, IdRegressionData())
    scales = []
    task.on_step_end = lambda model, step: scales.append((step, trainer.scaler.get_scale()))
    assert trainer.fit()["skipped_steps"] == 1
    assert same(weights_at(task, 2), weights_at(task, 3)) and same(weights_at(task, 4), weights_at(task, 5))
    assert dict(scales)[4] == dict(scales)[3] / 2  # the scaler saw the NaN and halved its scale
    log = (Path(cfg.run_dir) / "train.log").read_text()
    assert "step 2 skipped: non-finite loss" in log and "step 4 skipped" not in log


def test_stops_after_max_nonfinite_steps_in_a_row(tmp_path: Path) -> None:
    # steps 2-3 bad, 4 good (resets the count), 5-6-7 bad: the third in a row stops the run
    task = FaultyRegressionTask(nan_loss_at={2, 3, 5, 6, 7})
    cfg = make_cfg(tmp_path, "run", max_steps=10, ckpt_every=2, max_nonfinite_steps=3)
    with pytest.raises(NonFiniteError) as err:
        Trainer(cfg, ToyModel(), task, IdRegressionData()).fit()
    msg = str(err.value)
    last = Path(cfg.run_dir) / "checkpoints" / "step_00000006"
    assert msg.startswith("training stopped at step 7: 3 steps in a row had a non-finite loss or gradient "
                          "(max_nonfinite_steps=3;"), msg
    assert msg.endswith(f"Last checkpoint: {last}")
    assert isinstance(err.value, RuntimeError) and isinstance(err.value, FloatingPointError)  # the CLI prints RuntimeErrors
    assert int(task.calls) == 7 and last.is_dir() and not (last.parent / "step_00000008").exists()
    log = (Path(cfg.run_dir) / "train.log").read_text()
    assert "step 3 skipped: non-finite loss; no update (2 in a row, limit 3" in log
    assert "step 5 skipped: non-finite loss; no update (1 in a row, limit 3" in log
    assert "training finished" not in log
    with pytest.raises(ValueError, match="max_nonfinite_steps must be > 0"):
        make_cfg(tmp_path, "x", max_nonfinite_steps=0)


def _run(tmp_path: Path, name: str, spec: dict, resume: str = "", seed: int = 0, **kw):
    cfg = make_cfg(tmp_path, name, max_steps=10, batch_size=4, grad_accum_steps=2, ckpt_every=2, keep_last=0,
                   ema_decay=0.8, resume=resume, **kw)
    model = ToyModel(dropout=0.2, seed=seed)
    return cfg, model, Trainer(cfg, model, FaultyRegressionTask(**spec), IdRegressionData(noise=0.2))


def test_resume_right_after_a_skipped_step_is_exact(tmp_path: Path) -> None:
    spec = dict(nan_loss_at={8}, nan_grad_at={13})  # step 4 (checkpointed) and step 7 are skipped
    ref_cfg, ref_model, ref = _run(tmp_path, "ref", spec)
    assert ref.fit()["skipped_steps"] == 2
    mid = Path(ref_cfg.run_dir) / "checkpoints" / "step_00000004"
    assert final_state(ref_cfg.run_dir, 4)["nonfinite"] == {"in_a_row": 1, "total": 1}
    cfg, model, resumed = _run(tmp_path, "resumed", spec, resume=str(mid), seed=42)
    assert resumed.fit()["skipped_steps"] == 2
    for k, v in ref_model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    assert final_state(cfg.run_dir, 10)["nonfinite"] == final_state(ref_cfg.run_dir, 10)["nonfinite"]
    ema = "ema.safetensors"
    assert (Path(cfg.run_dir) / "checkpoints" / "step_00000010" / ema).read_bytes() == \
        (Path(ref_cfg.run_dir) / "checkpoints" / "step_00000010" / ema).read_bytes()


def test_the_count_in_a_row_survives_a_resume(tmp_path: Path) -> None:
    spec = dict(nan_loss_at={7, 9})  # steps 4 and 5 are bad; with a limit of 2 the run stops at step 5
    ref_cfg, _, ref = _run(tmp_path, "ref", spec, max_nonfinite_steps=2)
    with pytest.raises(NonFiniteError, match="stopped at step 5: 2 steps in a row"):
        ref.fit()
    mid = Path(ref_cfg.run_dir) / "checkpoints" / "step_00000004"
    _, _, resumed = _run(tmp_path, "resumed", spec, resume=str(mid), max_nonfinite_steps=2)
    with pytest.raises(NonFiniteError, match="stopped at step 5: 2 steps in a row.*Last checkpoint: .*step_00000004"):
        resumed.fit()


def test_batch_sample_ids_lookup() -> None:
    from fibervl.data.collate import Batch

    class Plain:
        sample_ids = ["a", "b"]

    class WithHook:
        def sample_ids(self, batch):
            return ["from-task"]

    assert batch_sample_ids(None, {"x": 1, "sample_ids": ["q1"], "image_ids": torch.tensor([5])}) == ["q1"]
    assert torch.equal(batch_sample_ids(None, {"image_ids": torch.tensor([5, 6])}), torch.tensor([5, 6]))
    assert batch_sample_ids(None, Plain()) == ["a", "b"]
    assert batch_sample_ids(WithHook(), {"sample_ids": ["q1"]}) == ["from-task"]
    assert batch_sample_ids(None, {"x": torch.zeros(2)}) is None and batch_sample_ids(None, (1, 2)) is None
    assert "sample_ids" in dir(Batch)  # the library's collated batches name their samples


def test_ddp_ranks_decide_together(tmp_path: Path) -> None:
    """Rank 1 alone gets a NaN loss on the last (gradient-syncing) micro-batch of step 2: both
    ranks skip the step, rank 0's log names rank 1's batch, and the next steps sync as usual.
    Then a checkpoint write fails on rank 0: both ranks raise instead of waiting for each other."""
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{HERE}", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "fault_worker.py"), str(tmp_path)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for r in (r0, r1):
        assert r["skipped_steps"] == 1 and r["adam_steps"] == 3
        assert r["step2_unchanged"] and r["step3_moved"]
    for k in r0["weights"]:
        assert torch.equal(r0["weights"][k], r1["weights"][k]), k
    log = (tmp_path / "run" / "train.log").read_text()
    assert "step 2 skipped: non-finite loss; no update (1 in a row" in log
    assert re.search(r"step 2 skipped: rank 1 micro-batch 2/2: loss=nan running_loss=[0-9.]+; sample ids \['s", log), log
    assert "step 2 skipped: rank 0" not in log  # rank 0's losses were finite
    # the same run shows that a checkpoint write failing on rank 0 stops both ranks (no hang)
    assert r0["write_error"] == "could not write checkpoint step_00000001 (simulated full disk)"
    assert r1["write_error"] == "rank 0 could not write the checkpoint of step 1 (see its error)"
    assert r0["write_error_step"] == r1["write_error_step"] == 1

"""Kill training with SIGKILL (mid-training, and inside a checkpoint write) or SIGTERM, resume,
and check that the run ends with exactly the weights of an uninterrupted run; kill points drawn
by seeds cover every phase of a checkpoint write and the middle of accumulation windows.

The toy run exercises everything that carries state: dropout and data augmentation drawn from the
global torch RNG, gradient accumulation with a short window at every epoch end (10 batches, 3 per
window), clipping, EMA, a task buffer, AdamW moments and the lr schedule.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fibervl.engine.checkpoint import PAUSE_PHASES, find_latest_checkpoint

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
MAX_STEPS = 24
ARGS = [f"max_steps={MAX_STEPS}", "batch_size=4", "grad_accum_steps=3", "ckpt_every=3", "keep_last=3",
        "ema_decay=0.9", "clip_grad_norm=1.0", "optim.lr=1e-2", "schedule.warmup=2", "log_every=4",
        "progress_bar=false", "device=cpu", "seed=3"]


def _env(**extra: str) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{HERE}", OMP_NUM_THREADS="1",
               TOY_NOISE="0.3", TOY_DROPOUT="0.2", TOY_SLEEP="0")
    env.pop("FIBERVL_CKPT_TEST_PAUSE", None)
    env.update(extra)
    return env


def _cmd(run_dir: Path, *more: str) -> list[str]:
    return [sys.executable, str(HERE / "engine_worker.py"), "regression", f"run_dir={run_dir}", *ARGS, *more]


def _run(run_dir: Path, *more: str, **env: str) -> None:
    res = subprocess.run(_cmd(run_dir, *more), env=_env(**env), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]


def _start(run_dir: Path, *more: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(_cmd(run_dir, *more), env=_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"worker exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the worker")
        time.sleep(0.02)


def _kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> int:
    proc.send_signal(sig)
    rc = proc.wait(timeout=60)
    proc.stderr.close()
    return rc


def _final(run_dir: Path) -> dict[str, torch.Tensor]:
    ck = run_dir / "checkpoints" / f"step_{MAX_STEPS:08d}"
    out = {f"model.{k}": v for k, v in load_file(str(ck / "model.safetensors")).items()}
    out.update({f"ema.{k}": v for k, v in load_file(str(ck / "ema.safetensors")).items()})
    state = torch.load(ck / "state.pt", weights_only=True)
    out.update({f"task.{k}": v for k, v in state["task"].items()})
    for i, st in state["optimizer"]["state"].items():
        out.update({f"adam.{i}.{k}": v for k, v in st.items()})
    return out


def _latest_step(run_dir: Path) -> int:
    p = run_dir / "checkpoints" / "latest"
    try:
        return int(p.read_text().strip().split("_")[1])
    except (FileNotFoundError, IndexError, ValueError):
        return -1


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    run = tmp_path_factory.mktemp("reference")
    _run(run)
    return _final(run)


def _assert_same(reference: dict, run_dir: Path) -> None:
    got = _final(run_dir)
    assert got.keys() == reference.keys()
    for k, v in reference.items():
        assert torch.equal(v, got[k]), f"{k} differs from the uninterrupted run"


def _resumed_from(run_dir: Path) -> str:
    lines = [x for x in (run_dir / "train.log").read_text().splitlines() if "resumed from" in x]
    assert len(lines) == 1, lines
    return lines[0]


def test_reference_is_not_trivially_reproducible(tmp_path: Path, reference: dict) -> None:
    # Without restoring the random state the run would differ: a different seed changes the result.
    _run(tmp_path, "seed=4")
    got = _final(tmp_path)
    assert not torch.equal(got["model.backbone.weight"], reference["model.backbone.weight"])


def test_sigkill_mid_training_resumes_exactly(tmp_path: Path, reference: dict) -> None:
    proc = _start(tmp_path, TOY_SLEEP="0.05")
    _wait_for(lambda: _latest_step(tmp_path) >= 9, proc)
    assert _kill(proc) == -signal.SIGKILL
    assert not (tmp_path / "checkpoints" / f"step_{MAX_STEPS:08d}").exists(), "the run finished before the kill"
    _run(tmp_path, "--resume")
    assert "resumed from" in _resumed_from(tmp_path)
    _assert_same(reference, tmp_path)


def test_sigkill_before_checkpoint_rename(tmp_path: Path, reference: dict) -> None:
    proc = _start(tmp_path, FIBERVL_CKPT_TEST_PAUSE="before_rename:12")
    _wait_for(lambda: (tmp_path / "checkpoints" / ".test-paused").exists(), proc)
    assert _kill(proc) == -signal.SIGKILL
    ck = tmp_path / "checkpoints"
    assert any(p.name.startswith(".tmp-step_00000012") for p in ck.iterdir())  # fully written, never renamed
    assert not (ck / "step_00000012").exists() and _latest_step(tmp_path) == 9
    _run(tmp_path, "--resume")
    assert "step_00000009 at step 9" in _resumed_from(tmp_path)
    assert not any(p.name.startswith(".tmp-") for p in ck.iterdir())  # stale temp dir cleaned
    _assert_same(reference, tmp_path)


def test_sigkill_between_rename_and_latest_pointer(tmp_path: Path, reference: dict) -> None:
    proc = _start(tmp_path, FIBERVL_CKPT_TEST_PAUSE="before_latest:12")
    _wait_for(lambda: (tmp_path / "checkpoints" / ".test-paused").exists(), proc)
    assert _kill(proc) == -signal.SIGKILL
    assert (tmp_path / "checkpoints" / "step_00000012").is_dir() and _latest_step(tmp_path) == 9
    _run(tmp_path, "--resume")
    assert "step_00000012 at step 12" in _resumed_from(tmp_path)  # newest complete checkpoint wins
    _assert_same(reference, tmp_path)


def test_sigterm_saves_and_resumes_exactly(tmp_path: Path, reference: dict) -> None:
    proc = _start(tmp_path, TOY_SLEEP="0.05")
    _wait_for(lambda: _latest_step(tmp_path) >= 6, proc)
    assert _kill(proc, signal.SIGTERM) == 0  # clean exit after saving the current step
    stopped_at = _latest_step(tmp_path)
    assert 6 <= stopped_at < MAX_STEPS
    _run(tmp_path, "--resume")
    assert f"at step {stopped_at} " in _resumed_from(tmp_path)
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / f"config.resumed_step_{stopped_at}.yaml").is_file()
    _assert_same(reference, tmp_path)


def test_resume_from_corrupt_explicit_checkpoint_names_file(tmp_path: Path) -> None:
    _run(tmp_path, "max_steps=6")
    f = tmp_path / "checkpoints" / "step_00000006" / "state.pt"
    f.write_bytes(f.read_bytes()[:100])
    res = subprocess.run(_cmd(tmp_path, "--resume", str(tmp_path / "checkpoints" / "step_00000006")), env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "CheckpointError" in res.stderr and "step_00000006/state.pt" in res.stderr


CKPT_STEPS = range(3, MAX_STEPS + 1, 3)


def _calls_left(step: int) -> int:
    """Micro-batches from ``step`` to the end: 10 batches per epoch in windows of 3, 3, 3, 1."""
    return sum(1 if s % 4 == 0 else 3 for s in range(step + 1, MAX_STEPS + 1))


def _kill_point(rng: random.Random, kind: str, resumed_at: int, last: bool) -> dict[str, str]:
    """Environment that pauses a run resumed at ``resumed_at``: in its ``n``-th micro-batch
    (``kind="call"``), or in a random phase of one of its checkpoint writes (``"ckpt"``; the final
    checkpoint only as the last kill, so that something is left to run afterwards)."""
    steps = [s for s in CKPT_STEPS if resumed_at < s and (last or s < MAX_STEPS)]
    if kind == "ckpt" and steps:
        return {"FIBERVL_CKPT_TEST_PAUSE": f"{rng.choice(PAUSE_PHASES)}:{rng.choice(steps)}"}
    return {"TOY_PAUSE_AT_CALL": str(rng.randint(1, _calls_left(resumed_at) - (0 if last else 1)))}


# Seeds whose draws, with the explicit tests above, reach every pause phase: 2 kills after
# model.safetensors of step 3 (no checkpoint yet: a fresh start) then at call 24; 13 at call 19,
# then before meta.json of the final step; 14 before pruning at step 18, then at call 13.
@pytest.mark.parametrize("seed", [2, 13, 14])
def test_sigkill_at_seeded_points_resumes_exactly(tmp_path: Path, reference: dict, seed: int) -> None:
    """Each seed kills the run twice (in a micro-step and in a checkpoint write, in a seeded
    order and at seeded points), resuming after each kill; the third run finishes."""
    rng = random.Random(seed)
    kinds = ["call", "ckpt"]
    rng.shuffle(kinds)
    ck, toy_pause = tmp_path / "checkpoints", tmp_path / ".toy-paused"
    resumed_at, expected = 0, None
    for i, kind in enumerate(kinds):
        point = _kill_point(rng, kind, resumed_at, last=i == len(kinds) - 1)
        proc = _start(tmp_path, "--resume", TOY_PAUSE_FILE=str(toy_pause), **point)
        _wait_for(lambda: toy_pause.exists() or (ck / ".test-paused").exists(), proc)
        assert _kill(proc) == -signal.SIGKILL, point
        toy_pause.unlink(missing_ok=True)
        (ck / ".test-paused").unlink(missing_ok=True)
        if expected is not None:
            assert f"resumed from {expected} " in _last_resume(tmp_path), point
        found = find_latest_checkpoint(ck)
        if "FIBERVL_CKPT_TEST_PAUSE" in point:  # the paused write is complete exactly from before_latest on
            phase, step = point["FIBERVL_CKPT_TEST_PAUSE"].split(":")
            complete = PAUSE_PHASES.index(phase) >= PAUSE_PHASES.index("before_latest")
            assert (found is not None and found.name == f"step_{int(step):08d}") == complete, (point, found)
        expected = found
        resumed_at = 0 if found is None else int(found.name.split("_")[1])
    _run(tmp_path, "--resume")
    if expected is not None:
        assert f"resumed from {expected} " in _last_resume(tmp_path)
    assert not any(p.name.startswith(".tmp-") for p in ck.iterdir())
    _assert_same(reference, tmp_path)


def _last_resume(run_dir: Path) -> str:
    lines = [x for x in (run_dir / "train.log").read_text().splitlines() if "resumed from" in x]
    return lines[-1] if lines else ""

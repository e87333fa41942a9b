"""Damaged checkpoints and failed writes, through the trainer: a corrupt or truncated newest
checkpoint is passed over for the previous one (with a message), and a write that fails with a
full disk damages nothing, leaves nothing that looks like a checkpoint, and says what happened."""

import errno
import io
import os
import re
from pathlib import Path

import pytest
import torch

import fibervl.engine.checkpoint as ckpt
from engine_toys import RegressionData, RegressionTask, ToyModel
from fibervl.engine.optim import OptimConfig, ScheduleConfig
from fibervl.engine.trainer import Trainer, TrainConfig


def make_cfg(tmp_path: Path, name: str, **kw) -> TrainConfig:
    base = dict(run_dir=str(tmp_path / name), max_steps=6, batch_size=4, grad_accum_steps=2, ckpt_every=2,
                keep_last=0, ema_decay=0.8, log_every=2, progress_bar=False, optim=OptimConfig(lr=1e-2),
                schedule=ScheduleConfig(warmup=0))
    base.update(kw)
    return TrainConfig(**base)


def train(cfg: TrainConfig, seed: int = 0) -> torch.nn.Module:
    model = ToyModel(dropout=0.2, seed=seed)
    Trainer(cfg, model, RegressionTask(), RegressionData(noise=0.2)).fit()
    return model


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def flip_a_byte(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))


def truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


@pytest.mark.parametrize("damage, fname, why", [
    (flip_a_byte, "state.pt", r"checkpoint file corrupt \(sha256 mismatch\)"),  # same size: only the hash sees it
    (flip_a_byte, "ema.safetensors", r"checkpoint file corrupt \(sha256 mismatch\)"),
    (truncate, "model.safetensors", r"checkpoint file truncated or altered"),
])
def test_resume_passes_over_a_corrupt_newest_checkpoint(tmp_path: Path, damage, fname, why) -> None:
    reference = train(make_cfg(tmp_path, "run"))
    root = tmp_path / "run" / "checkpoints"
    damage(root / "step_00000006" / fname)
    resumed = train(make_cfg(tmp_path, "run", resume="auto"), seed=42)
    assert_same_weights(reference, resumed)  # steps 5-6 trained again from step 4, exactly as before
    log = (tmp_path / "run" / "train.log").read_text()
    bad = root / "step_00000006" / fname
    assert re.search(rf"WARNING skipping unusable checkpoint step_00000006: {why}: {bad}", log), log
    assert "WARNING using step_00000004, the newest checkpoint that verifies, instead of step_00000006" in log
    assert f"resumed from {root / 'step_00000004'} at step 4" in log
    ckpt.verify_checkpoint(root / "step_00000006")  # rewritten whole


def test_resume_names_every_skipped_checkpoint(tmp_path: Path) -> None:
    train(make_cfg(tmp_path, "run", max_steps=4))
    root = tmp_path / "run" / "checkpoints"
    flip_a_byte(root / "step_00000004" / "model.safetensors")
    (root / "step_00000002" / "meta.json").unlink()
    with pytest.raises(ckpt.CheckpointError, match=r"no usable checkpoint .*step_00000002.*step_00000004"):
        train(make_cfg(tmp_path, "run", max_steps=4, resume="auto"))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "skipping unusable checkpoint step_00000004: checkpoint file corrupt" in log
    assert "skipping unusable checkpoint step_00000002: incomplete checkpoint (no meta.json)" in log


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    """The uninterrupted run of :func:`make_cfg`'s settings."""
    return train(make_cfg(tmp_path_factory.mktemp("reference"), "ref"))


def _disk_full(path) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def fail_in(monkeypatch: pytest.MonkeyPatch, target: str, step_name: str) -> None:
    """Make checkpoint ``step_name``'s ``target`` write fail with ENOSPC, as a full disk would: the
    weight and state files stop halfway; ``meta.json`` and ``latest`` (small text files) fail
    in their fsync, where a full disk shows for data that was only buffered."""
    real_save_model, real_torch_save, real_fsync = ckpt.save_model, torch.save, os.fsync

    def half_then_fail(write, path) -> None:
        buf = io.BytesIO()
        write(buf)
        with open(path, "wb") as f:
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise _disk_full(path)

    def save_model(model, filename, metadata=None):
        if target == "model" and step_name in str(filename):
            from safetensors.torch import save as to_bytes

            return half_then_fail(lambda b: b.write(to_bytes({k: v.contiguous() for k, v in model.state_dict().items()})),
                                  filename)
        return real_save_model(model, filename, metadata=metadata)

    def torch_save(obj, f, *a, **kw):
        if target == "state" and step_name in str(f):
            return half_then_fail(lambda b: real_torch_save(obj, b), f)
        return real_torch_save(obj, f, *a, **kw)

    def fsync(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if (target == "meta" and path.name.startswith(".meta.json.tmp") and step_name in str(path)) or \
                (target == "latest" and path.name.startswith(".latest.tmp") and path.read_text().strip() == step_name):
            raise _disk_full(path)
        real_fsync(fd)

    monkeypatch.setattr(ckpt, "save_model", save_model)
    monkeypatch.setattr(ckpt.torch, "save", torch_save)
    monkeypatch.setattr(ckpt.os, "fsync", fsync)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the file of an fsync through /proc")
@pytest.mark.parametrize("target", ["model", "state", "meta", "latest"])
def test_a_full_disk_during_a_checkpoint_write_damages_nothing(tmp_path: Path, monkeypatch, target: str,
                                                               reference: torch.nn.Module) -> None:
    cfg = make_cfg(tmp_path, "run", keep_last=1)  # keep_last=1: only a finished write may prune step 2
    root = tmp_path / "run" / "checkpoints"
    step2 = root / "step_00000002"
    fail_in(monkeypatch, target, "step_00000004")
    with pytest.raises(ckpt.CheckpointError) as err:
        train(cfg)
    msg = str(err.value)
    if target == "latest":
        assert msg.startswith(f"checkpoint {root / 'step_00000004'} is complete, but {root / 'latest'} could not be "
                              "updated (OSError: [Errno 28] No space left on device"), msg
        assert msg.endswith("resume=auto still finds step_00000004, the newest complete checkpoint")
        newest = "step_00000004"
    else:
        assert msg.startswith(f"could not write checkpoint step_00000004 in {root} (OSError: [Errno 28] No space "
                              "left on device"), msg
        assert msg.endswith("nothing was replaced: the earlier checkpoints are untouched (newest complete: step_00000002)")
        newest = "step_00000002"
        assert not (root / "step_00000004").exists()
    assert msg in (tmp_path / "run" / "train.log").read_text()
    monkeypatch.undo()
    # nothing half-written is left, and nothing half-written could pass for a checkpoint
    assert sorted(p.name for p in root.iterdir()) == sorted({"latest", "step_00000002", newest})
    assert (root / "latest").read_text().strip() == "step_00000002"
    ckpt.verify_checkpoint(step2)  # every file as hashed when it was written
    ckpt.load_model_weights(step2, ToyModel())
    assert ckpt.load_state(step2)["step"] == 2
    assert ckpt.find_latest_checkpoint(root).name == newest
    resumed = train(make_cfg(tmp_path, "run", keep_last=1, resume="auto"), seed=42)
    assert_same_weights(reference, resumed)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000006"]

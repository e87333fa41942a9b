import json
from pathlib import Path

import pytest
import torch

from engine_toys import DualEncoder, ITCTask, PairData, RegressionData, RegressionTask, ToyModel
from fibervl.engine.checkpoint import CheckpointError
from fibervl.engine.config import load_config
from fibervl.engine.ema import ModelEMA
from fibervl.engine.optim import OptimConfig, ScheduleConfig
from fibervl.engine.trainer import Trainer, TrainConfig


def make_cfg(tmp_path: Path, name: str, **kw) -> TrainConfig:
    base = dict(run_dir=str(tmp_path / name), max_steps=10, batch_size=8, log_every=5, ckpt_every=None,
                progress_bar=False, optim=OptimConfig(lr=1e-2), schedule=ScheduleConfig(warmup=0))
    base.update(kw)
    return TrainConfig(**base)


def read_metrics(run_dir: str) -> list[dict]:
    return [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]


def test_loss_decreases_and_run_dir_artifacts(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "run", max_steps=60, log_every=10, ckpt_every=30, schedule=ScheduleConfig(name="cosine", warmup=5))
    out = Trainer(cfg, ToyModel(), RegressionTask(), RegressionData()).fit()
    assert out["step"] == 60 and not out["stopped_by_signal"]
    m = [r for r in read_metrics(cfg.run_dir) if "loss" in r]
    assert [r["step"] for r in m] == [10, 20, 30, 40, 50, 60]
    assert m[-1]["loss"] < 0.5 * m[0]["loss"], [r["loss"] for r in m]
    for key in ("lr", "samples_per_s", "data_time_s", "compute_time_s", "epoch", "running_loss", "samples_seen"):
        assert key in m[0]
    assert m[0]["samples_seen"] == 80 and m[-1]["samples_seen"] == 480
    assert load_config(TrainConfig, Path(cfg.run_dir) / "config.yaml") == cfg  # snapshot
    log = (Path(cfg.run_dir) / "train.log").read_text()
    assert "training finished at step 60" in log and "samples/s" in log
    ck = Path(cfg.run_dir) / "checkpoints"
    assert (ck / "latest").read_text().strip() == "step_00000060"
    assert sorted(p.name for p in ck.iterdir() if p.name.startswith("step_")) == ["step_00000030", "step_00000060"]


def _final_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}  # the trainer may have moved it to a GPU


def test_grad_accumulation_equals_big_batch(tmp_path: Path) -> None:
    big = ToyModel()
    Trainer(make_cfg(tmp_path, "big", batch_size=8, grad_accum_steps=1, clip_grad_norm=0.5), big, RegressionTask(), RegressionData()).fit()
    small = ToyModel()
    Trainer(make_cfg(tmp_path, "acc", batch_size=4, grad_accum_steps=2, clip_grad_norm=0.5), small, RegressionTask(),
            RegressionData()).fit()
    a, b = _final_params(big), _final_params(small)
    moved = ToyModel().state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5), k
        assert not torch.equal(a[k], moved[k]), f"{k} did not train"


def test_param_groups_from_config(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "pg", max_steps=1, optim=OptimConfig(lr=1e-3, lr_multipliers={"heads.": 5.0, "cross_modal.": 2.0}))
    tr = Trainer(cfg, ToyModel(), RegressionTask(), RegressionData())
    tr.fit()
    by_name = {n: g for g in tr.optimizer.param_groups for n in g["param_names"]}
    assert by_name["heads.out.weight"]["lr_mult"] == 5.0 and by_name["heads.out.weight"]["weight_decay"] == 0.01
    assert by_name["cross_modal.mix.bias"]["lr_mult"] == 2.0 and by_name["cross_modal.mix.bias"]["weight_decay"] == 0.0
    assert by_name["norm.weight"]["weight_decay"] == 0.0 and by_name["backbone.weight"]["lr_mult"] == 1.0
    assert by_name["backbone.weight"]["initial_lr"] == pytest.approx(1e-3)


class GroupedToy(ToyModel):
    """A toy model that names its parameter groups, as the fibervl models do."""

    def parameter_groups(self) -> dict:
        return {"head": [self.heads], "mixer": [self.cross_modal], "mixer_bias": [self.cross_modal["mix"].bias]}


def test_param_groups_named_by_the_model(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "named", max_steps=1,
                   optim=OptimConfig(lr=1e-3, lr_multipliers={"head": 5.0, "mixer": 2.0, "mixer_bias": 3.0}))
    tr = Trainer(cfg, GroupedToy(), RegressionTask(), RegressionData())
    tr.fit()
    by_name = {n: g["lr_mult"] for g in tr.optimizer.param_groups for n in g["param_names"]}
    assert by_name == {"backbone.weight": 1.0, "backbone.bias": 1.0, "cross_modal.mix.weight": 2.0,
                       "cross_modal.mix.bias": 3.0, "norm.weight": 1.0, "norm.bias": 1.0,
                       "heads.out.weight": 5.0, "heads.out.bias": 5.0}
    with pytest.raises(ValueError, match="'heads' is not a parameter group of the model; its groups are: head, mixer"):
        Trainer(make_cfg(tmp_path, "typo", max_steps=1, optim=OptimConfig(lr_multipliers={"heads": 5.0})),
                GroupedToy(), RegressionTask(), RegressionData()).fit()


def test_eval_callback_does_not_disturb_training_rng(tmp_path: Path) -> None:
    calls = []

    def evaluate(model: torch.nn.Module) -> dict:
        assert not model.training and not torch.is_grad_enabled()
        torch.randn(100)  # consumes the global RNG: must not change training (dropout)
        calls.append(1)
        return {"score": 1.5}

    m1, m2 = ToyModel(dropout=0.3), ToyModel(dropout=0.3)
    cfg1 = make_cfg(tmp_path, "ev", eval_every=3)
    out = Trainer(cfg1, m1, RegressionTask(), RegressionData(), evaluate=evaluate).fit()
    Trainer(make_cfg(tmp_path, "noev"), m2, RegressionTask(), RegressionData()).fit()
    assert len(calls) == 4  # steps 3, 6, 9 and the end
    assert out["eval"] == {"eval/score": 1.5}
    assert any(r.get("eval/score") == 1.5 for r in read_metrics(cfg1.run_dir))
    for k, v in _final_params(m1).items():
        assert torch.equal(v, m2.state_dict()[k]), k


def test_bf16_autocast_and_ema(tmp_path: Path) -> None:
    model = ToyModel()
    cfg = make_cfg(tmp_path, "bf16", precision="bf16", max_steps=30, ema_decay=0.9, eval_with_ema=True)
    seen = {}

    def evaluate(m: torch.nn.Module) -> dict:
        seen["w"] = m.heads["out"].weight.detach().clone()
        return {}

    class CheckAutocast(RegressionTask):
        def training_step(self, model, batch):
            seen["dtype"] = model.backbone(batch["x"]).dtype  # a Linear under CPU bf16 autocast
            return super().training_step(model, batch)

    tr = Trainer(cfg, model, CheckAutocast(), RegressionData(), evaluate=evaluate)
    tr.fit()
    assert seen["dtype"] == torch.bfloat16
    m = [r for r in read_metrics(cfg.run_dir) if "loss" in r]
    assert all(r["loss"] == r["loss"] for r in m) and m[-1]["loss"] < m[0]["loss"]
    # evaluation ran with the EMA weights, and the model got its own weights back
    assert torch.allclose(seen["w"], tr.ema.shadow["heads.out.weight"])
    assert not torch.equal(seen["w"], model.heads["out"].weight)
    assert (Path(cfg.run_dir) / "checkpoints" / "step_00000030" / "ema.safetensors").is_file()


def test_ema_math() -> None:
    lin = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    ema = ModelEMA(lin, decay=0.5)
    with torch.no_grad():
        lin.weight.fill_(2.0)
    ema.update(lin)
    assert ema.shadow["weight"].item() == 1.0
    ema.update(lin)
    assert ema.shadow["weight"].item() == 1.5
    assert ModelEMA(lin, decay=0.99, warmup=True).current_decay() == pytest.approx(0.1)
    with pytest.raises(ValueError):
        ModelEMA(lin, decay=1.0)


def test_itc_task_with_queue_trains(tmp_path: Path) -> None:
    task = ITCTask(queue_size=16)
    cfg = make_cfg(tmp_path, "itc", max_steps=40, log_every=10, optim=OptimConfig(lr=3e-2))
    Trainer(cfg, DualEncoder(), task, PairData()).fit()
    m = [r for r in read_metrics(cfg.run_dir) if "loss" in r]
    assert m[-1]["loss"] < m[0]["loss"]
    assert int(task.queue.count) == 16
    state = torch.load(Path(cfg.run_dir) / "checkpoints" / "step_00000040" / "state.pt", weights_only=True)
    assert torch.equal(state["task"]["queue.image"], task.queue.image)


def test_resume_errors(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "r", resume=str(tmp_path / "nowhere" / "step_00000005"))
    with pytest.raises(CheckpointError, match="checkpoint directory not found: .*nowhere/step_00000005"):
        Trainer(cfg, ToyModel(), RegressionTask(), RegressionData()).fit()
    with pytest.raises(TypeError, match="training_step"):
        Trainer(make_cfg(tmp_path, "x"), ToyModel(), object(), RegressionData())
    with pytest.raises(ValueError, match="gives no batch.*lower train.batch_size or set train.drop_last=false"):
        Trainer(make_cfg(tmp_path, "y", batch_size=64), ToyModel(), RegressionTask(), RegressionData()).fit()


def test_bad_task_output(tmp_path: Path) -> None:
    class NoLoss:
        def training_step(self, model, batch):
            return {"mse": model(batch["x"]).sum()}

    with pytest.raises(TypeError, match="'loss'"):
        Trainer(make_cfg(tmp_path, "nl"), ToyModel(), NoLoss(), RegressionData()).fit()

    class NanLoss:
        def training_step(self, model, batch):
            return {"loss": model(batch["x"]).sum() * float("nan")}

    # every step skipped: the default limit of 5 in a row stops the run, before any checkpoint
    with pytest.raises(FloatingPointError, match=r"stopped at step 5: 5 steps in a row .*Last checkpoint: none yet in .*nan/checkpoints"):
        Trainer(make_cfg(tmp_path, "nan"), ToyModel(), NanLoss(), RegressionData()).fit()


class StreamData(torch.utils.data.IterableDataset):
    """Iterable dataset without a length: a (seed, epoch)-dependent order of 22 samples, i.e.
    5 full batches of 4 and a partial one (kept: drop_last=False), so windows of 4 micro-batches
    end short at every epoch end."""

    def __init__(self) -> None:
        self.base = RegressionData(n=22)
        self.epoch = 0
        self.set_epoch_calls = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.set_epoch_calls.append(epoch)

    def __iter__(self):
        order = torch.randperm(len(self.base), generator=torch.Generator().manual_seed(100 + self.epoch))
        for i in order.tolist():
            yield self.base[i]


def _resume_in_process(tmp_path: Path, data_factory, which: int, **kw):
    """Run to the end, then resume a fresh model from a middle checkpoint: same final weights."""
    ref_model = ToyModel(dropout=0.2)
    cfg = make_cfg(tmp_path, "ref", keep_last=0, **kw)
    Trainer(cfg, ref_model, RegressionTask(), data_factory()).fit()
    mid = sorted((Path(cfg.run_dir) / "checkpoints").glob("step_*"))[which]
    model = ToyModel(dropout=0.2, seed=42)  # different init: everything must come from the checkpoint
    cfg2 = make_cfg(tmp_path, "resumed", keep_last=0, resume=str(mid), **kw)
    data = data_factory()
    Trainer(cfg2, model, RegressionTask(), data).fit()
    for k, v in ref_model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    return data


def test_iterable_dataset_short_windows_and_resume(tmp_path: Path) -> None:
    data = _resume_in_process(tmp_path, StreamData, 0, max_steps=7, batch_size=4, grad_accum_steps=4, drop_last=False,
                              ckpt_every=3, ema_decay=0.5)
    # 6 batches per epoch in windows of 4 + 2: step 3 ends after batch 4 of epoch 1, whose first
    # 4 batches the resumed run reads and drops (the dataset has no set_start)
    assert data.set_epoch_calls[:2] == [1, 2]
    log = (tmp_path / "resumed" / "train.log").read_text()
    assert "at step 3 (epoch 1, batch 4)" in log


def test_epochs_mode_resume_mid_epoch(tmp_path: Path) -> None:
    _resume_in_process(tmp_path, lambda: RegressionData(noise=0.2), 0, max_steps=None, epochs=3, batch_size=4,
                       grad_accum_steps=3, ckpt_every=2)
    log = (tmp_path / "resumed" / "train.log").read_text()
    assert "at step 2 (epoch 0, batch 6)" in log  # 10 batches = windows 3+3+3+1 -> 4 steps per epoch
    m = read_metrics(str(tmp_path / "ref"))
    assert m[-1]["step"] == 12 and m[-1]["samples_seen"] == 3 * 40


def test_existing_checkpoints_are_never_overwritten(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "run", max_steps=4, ckpt_every=2)
    Trainer(cfg, ToyModel(), RegressionTask(), RegressionData()).fit()
    with pytest.raises(CheckpointError, match=r"already holds checkpoints \(newest step_00000004\).*resume=auto"):
        Trainer(cfg, ToyModel(), RegressionTask(), RegressionData()).fit()
    for p in (Path(cfg.run_dir) / "checkpoints").glob("step_*/model.safetensors"):
        p.write_bytes(b"broken")
    auto = make_cfg(tmp_path, "run", max_steps=4, ckpt_every=2, resume="auto")
    with pytest.raises(CheckpointError, match=r"no usable checkpoint .*step_00000002.*step_00000004"):
        Trainer(auto, ToyModel(), RegressionTask(), RegressionData()).fit()
    # resume=auto in an empty run_dir starts a new run
    out = Trainer(make_cfg(tmp_path, "fresh", max_steps=2, resume="auto"), ToyModel(), RegressionTask(), RegressionData()).fit()
    assert out["step"] == 2


def test_tensorboard_is_optional(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "tb", max_steps=2, tensorboard=True)
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="tensorboard=true needs the tensorboard package"):
            Trainer(cfg, ToyModel(), RegressionTask(), RegressionData()).fit()
    else:
        Trainer(cfg, ToyModel(), RegressionTask(), RegressionData()).fit()
        assert any((Path(cfg.run_dir) / "tensorboard").iterdir())


def test_extending_max_steps_on_resume_uses_the_new_schedule(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "ext", max_steps=4, schedule=ScheduleConfig(name="linear", warmup=0))
    Trainer(cfg, ToyModel(), RegressionTask(), RegressionData()).fit()
    cfg2 = make_cfg(tmp_path, "ext", max_steps=8, resume="auto", log_every=1,
                    schedule=ScheduleConfig(name="linear", warmup=0))
    Trainer(cfg2, ToyModel(), RegressionTask(), RegressionData()).fit()
    lrs = {r["step"]: r["lr"] for r in read_metrics(cfg2.run_dir) if "lr" in r}
    assert lrs[5] == pytest.approx(1e-2 * (1 - 4 / 8)) and lrs[8] == pytest.approx(1e-2 * (1 - 7 / 8))
    assert "schedule differs from the checkpoint" in (Path(cfg2.run_dir) / "train.log").read_text()

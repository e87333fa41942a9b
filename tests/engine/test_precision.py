"""precision=auto: bf16 where bf16 matmuls are fast, fp32 where the CPU emulates bf16."""

from pathlib import Path

import pytest
import torch

from engine_toys import RegressionData, RegressionTask, ToyModel
from fibervl.engine import precision as P
from fibervl.engine.optim import OptimConfig, ScheduleConfig
from fibervl.engine.trainer import Trainer, TrainConfig


@pytest.fixture
def cpu_speedup(monkeypatch):
    """Pretend the CPU's bf16 / fp32 matmul speed ratio is the given value (on a machine that
    does not list its instruction sets, where the ratio decides)."""
    monkeypatch.delenv(P.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(P, "cpu_bf16_instructions", lambda: None)

    def set_speedup(value: float) -> None:
        monkeypatch.setattr(P, "cpu_bf16_speedup", lambda: value)

    return set_speedup


@pytest.mark.parametrize("speedup, expected", [(4.2, "bf16"), (1.0, "fp32"), (0.003, "fp32")])
def test_auto_follows_the_measured_speed(cpu_speedup, speedup, expected):
    cpu_speedup(speedup)
    assert P.resolve_precision("auto", "cpu") == expected
    assert P.uses_bf16("auto", "cpu") is (expected == "bf16")


def test_explicit_precisions_are_kept_and_slow_bf16_is_logged(cpu_speedup, caplog):
    cpu_speedup(0.003)
    for precision in ("fp32", "bf16", "fp16"):
        assert P.resolve_precision(precision, "cpu") == precision
    assert "precision=auto chooses fp32" in caplog.text


def test_environment_overrides_auto_and_bad_values_are_errors(cpu_speedup, monkeypatch):
    cpu_speedup(0.003)
    monkeypatch.setenv(P.ENV_OVERRIDE, "bf16")
    assert P.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setenv(P.ENV_OVERRIDE, "fp8")
    with pytest.raises(ValueError, match="FIBERVL_AUTO_PRECISION"):
        P.resolve_precision("auto", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        P.resolve_precision("half", "cpu")


X86_BF16 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
X86_AVX2 = "processor\t: 0\nflags\t\t: fpu sse avx2 fma\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize("cpuinfo, listed", [(X86_BF16, ("avx512_bf16", "amx_bf16")), (X86_AVX2, ()),
                                             (ARM_BF16, ("bf16",)), ("processor\t: 0\n", None)])
def test_cpuinfo_names_the_native_bf16_instructions(cpuinfo, listed):
    assert P.bf16_instructions_in(cpuinfo) == listed


@pytest.mark.parametrize("listed, expected", [(("amx_bf16",), "bf16"), ((), "fp32")])
def test_auto_follows_the_instruction_sets_whatever_the_measured_speed(monkeypatch, listed, expected):
    """Where the CPU lists its instruction sets, auto is a property of the hardware: a measurement
    slowed by a busy host (1.1x) does not turn a bf16 machine to fp32, nor the reverse."""
    monkeypatch.delenv(P.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(P, "cpu_bf16_instructions", lambda: listed)
    monkeypatch.setattr(P, "cpu_bf16_speedup", lambda: 1.1 if listed else 4.0)
    assert P.resolve_precision("auto", "cpu") == expected
    assert ("bf16 instructions" in P.auto_reason("cpu")) is True


def test_the_measurement_is_a_positive_ratio():
    ratio = P.cpu_bf16_speedup()
    assert ratio > 0 and P.cpu_bf16_speedup() == ratio  # measured once, then cached


def scripted_timer(bf16_seconds: list[float], fp32_seconds: float = 1e-3):
    """A stand-in for ``precision._seconds``: runs the matmul and reports the next scripted
    time of its precision (bf16 calls in order, the last one repeated)."""
    calls = iter(bf16_seconds)
    last = [bf16_seconds[-1]]

    def timer(fn):
        if fn().dtype == torch.bfloat16:
            last[0] = next(calls, last[0])
            return last[0]
        return fp32_seconds
    return timer


@pytest.mark.parametrize("bf16_seconds, fast", [
    ([0.1, 4e-4], True),  # the first call builds the kernel: a warm-up, not a measurement
    ([0.1, 0.05], False),  # every call slow: emulated
])
def test_a_slow_first_bf16_call_is_a_warm_up(monkeypatch, bf16_seconds, fast):
    monkeypatch.setattr(P, "_seconds", scripted_timer(bf16_seconds))
    ratio = P.cpu_bf16_speedup.__wrapped__()
    assert (ratio >= P._MIN_CPU_SPEEDUP) is fast


@pytest.mark.parametrize("speedup, dtype", [(4.2, torch.bfloat16), (0.003, torch.float32)])
def test_trainer_resolves_auto(tmp_path: Path, cpu_speedup, speedup, dtype):
    cpu_speedup(speedup)
    seen = {}

    class RecordDtype(RegressionTask):
        def training_step(self, model, batch):
            seen["dtype"] = model.backbone(batch["x"]).dtype
            return super().training_step(model, batch)

    # device cpu: the choice under test is the CPU one (on a GPU, auto is always bf16)
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), max_steps=2, batch_size=4, precision="auto", ckpt_every=None, device="cpu",
                      progress_bar=False, optim=OptimConfig(lr=1e-2), schedule=ScheduleConfig(warmup=0))
    trainer = Trainer(cfg, ToyModel(), RecordDtype(), RegressionData())
    trainer.fit()
    assert seen["dtype"] == dtype
    assert trainer.precision == ("bf16" if dtype == torch.bfloat16 else "fp32")
    # the log says what was measured: the speed-up that decided
    assert f"(auto: bf16 matmul {speedup:.2g}x fp32)" in (tmp_path / "run" / "train.log").read_text()


def _grads_of(step) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(3)  # the same masks and ITM negatives in both runs
    loss, model = step()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("what", ["coarse", "caption"])
def test_training_forward_computes_the_same_step_as_the_fused_kernel(what):
    """The CPU training context's math attention path gives the step the default kernel gives,
    with padding (text masks in self- and cross-attention), Swin's shifted-window masks and
    the captioner's causal mask."""
    from fibervl.modeling.fiber import FiberModel
    from fibervl.tasks.caption import caption_mle_loss
    from fibervl.tasks.pretrain_coarse import CoarseObjectives, CoarsePretrainTask
    from fibervl.testing.configs import micro_config
    from fibervl.testing.models import set_fusion_gates

    torch.manual_seed(0)
    model = set_fusion_gates(FiberModel(micro_config()).train(), 0.5)  # cross-attention in the gradient
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 99, (4, 8), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    ids[1, 5:], ids[1, 4] = 1, 2
    mask = ids.ne(1).long()
    images = torch.randn(4, 3, 64, 64, generator=g)
    if what == "coarse":
        task = CoarsePretrainTask(CoarseObjectives(), cfg.hidden_size, cfg.text.vocab_size, cfg.text.mask_token_id,
                                  (0, 1, 2))
        batch = {"images": images, "input_ids": ids, "attention_mask": mask, "image_ids": torch.arange(4)}
        def step():
            task.sampling_steps.zero_()  # the task draws masks and negatives from its step count
            return task.training_step(model, batch)["loss"], model
    else:
        def step(): return caption_mle_loss(model, images, ids, mask)[0], model  # noqa: E704

    def in_context():
        with P.training_forward("fp32", torch.device("cpu")):
            return step()

    model.zero_grad(set_to_none=True)
    loss_a, grads_a = _grads_of(step)
    model.zero_grad(set_to_none=True)
    loss_b, grads_b = _grads_of(in_context)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and any(".t2i." in n or ".i2t." in n for n in grads_a)
    largest = max(g.abs().max().item() for g in grads_a.values())
    for name in grads_a:  # other kernels, other rounding: an absolute floor in proportion to the gradients
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6 * largest, msg=name)

import math

import pytest
import torch
from torch import nn

from fibervl.engine.optim import (
    OptimConfig, ScheduleConfig, build_optimizer, build_param_groups, build_scheduler, lr_factor, lr_multiplier_for,
)


class Fiberish(nn.Module):
    """Parameter names shaped like the FIBER model's."""

    def __init__(self) -> None:
        super().__init__()
        self.text = nn.ModuleDict({"layer": nn.Linear(4, 4), "LayerNorm": nn.LayerNorm(4)})
        self.vision = nn.ModuleDict({"attn": nn.ModuleDict({"qkv_i2t": nn.Linear(4, 4)})})
        self.vision.attn.alpha_i2t = nn.Parameter(torch.zeros(()))
        self.cross_modal = nn.ModuleDict({"text_transform": nn.Linear(4, 4)})
        self.heads = nn.ModuleDict({"itm": nn.Linear(4, 2)})
        self.temp = nn.Parameter(torch.tensor(0.07))
        self.pos_embed = nn.Parameter(torch.zeros(1, 3, 4))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def groups_by_name(model: nn.Module, cfg: OptimConfig) -> dict[str, tuple[float, float]]:
    out = {}
    for g in build_param_groups(model.named_parameters(), cfg):
        for n in g["param_names"]:
            out[n] = (g["lr"], g["weight_decay"])
    return out


def test_multipliers_and_decay_rules() -> None:
    cfg = OptimConfig(lr=1e-4, weight_decay=0.01, lr_multipliers={"heads.": 5.0, "cross_modal.": 5.0, "*i2t*": 3.0},
                      no_decay=["pos_embed"])
    g = groups_by_name(Fiberish(), cfg)
    assert "frozen.weight" not in g and "frozen.bias" not in g
    assert g["text.layer.weight"] == (1e-4, 0.01)
    assert g["text.layer.bias"] == (1e-4, 0.0)  # bias: no decay
    assert g["text.LayerNorm.weight"] == (1e-4, 0.0)  # norm weight: 1-D
    assert g["temp"] == (1e-4, 0.0)  # scalar
    assert g["pos_embed"] == (1e-4, 0.0)  # no_decay pattern
    assert g["heads.itm.weight"] == (pytest.approx(5e-4), 0.01)
    assert g["cross_modal.text_transform.bias"] == (pytest.approx(5e-4), 0.0)
    assert g["vision.attn.qkv_i2t.weight"] == (pytest.approx(3e-4), 0.01)  # glob
    assert g["vision.attn.alpha_i2t"] == (pytest.approx(3e-4), 0.0)


def test_longest_pattern_wins_first_on_ties() -> None:
    mults = {"heads.": 5.0, "heads.itm.": 10.0, "itm": 2.0}
    assert lr_multiplier_for("heads.itm.weight", mults) == 10.0
    assert lr_multiplier_for("heads.mlm.weight", mults) == 5.0
    assert lr_multiplier_for("backbone.x", mults) == 1.0
    assert lr_multiplier_for("a.b", {"a.": 2.0, ".b": 3.0}) == 2.0  # same length: first listed


def fiberish_groups(m: Fiberish) -> dict:
    """Named groups as a model's ``parameter_groups()`` gives them: nested (``gate`` inside
    ``fusion``) and overlapping the name patterns."""
    return {"heads": [m.heads], "fusion": [m.vision.attn, m.vision.attn.alpha_i2t, m.cross_modal],
            "gate": [m.vision.attn.alpha_i2t], "text": [m.text]}


def test_named_groups_smallest_wins_and_patterns_override() -> None:
    m = Fiberish()

    def by_name(mults: dict) -> dict[str, float]:
        groups = build_param_groups(m.named_parameters(), OptimConfig(lr=1.0, lr_multipliers=mults), fiberish_groups(m))
        return {n: g["lr_mult"] for g in groups for n in g["param_names"]}

    g = by_name({"fusion": 5.0, "gate": 20.0, "heads": 3.0})
    assert g["vision.attn.alpha_i2t"] == 20.0  # the gate lies inside fusion: the smaller group wins
    assert g["vision.attn.qkv_i2t.weight"] == g["cross_modal.text_transform.bias"] == 5.0
    assert g["heads.itm.weight"] == 3.0 and g["text.layer.weight"] == g["temp"] == 1.0
    # listed the other way round, the same: the order of the keys does not decide nesting
    assert by_name({"gate": 20.0, "heads": 3.0, "fusion": 5.0}) == g
    # a name pattern overrides the groups; the rest keep their group's multiplier
    g = by_name({"heads": 3.0, "heads.itm.bias": 7.0})
    assert g["heads.itm.bias"] == 7.0 and g["heads.itm.weight"] == 3.0


def test_unknown_group_is_a_clear_error() -> None:
    m = Fiberish()
    with pytest.raises(ValueError, match=r"'head' is not a parameter group of the model; its groups are: heads, fusion, "
                                         r"gate, text"):
        build_param_groups(m.named_parameters(), OptimConfig(lr_multipliers={"head": 5.0}), fiberish_groups(m))
    # a model without named groups: only name patterns (with a '.' or a glob character) work
    with pytest.raises(ValueError, match=r"'heads' is not a parameter group .* names no parameter groups"):
        build_param_groups(m.named_parameters(), OptimConfig(lr_multipliers={"heads": 5.0}))


def test_optimizer_defaults_and_tied_params() -> None:
    m = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    m[1].weight = m[0].weight  # tied: optimised once
    opt = build_optimizer(m.named_parameters(), OptimConfig())
    assert sum(len(g["params"]) for g in opt.param_groups) == 3
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-8
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_param_groups(nn.Linear(2, 2).requires_grad_(False).named_parameters(), OptimConfig())


def test_fused_update_matches_the_per_tensor_loop() -> None:
    """The engine's AdamW is the fused kernel; its updates, group rates and decay included, are
    the per-tensor AdamW's to float rounding over several steps."""
    torch.manual_seed(0)
    fused_model = Fiberish()
    loop_model = Fiberish()
    loop_model.load_state_dict(fused_model.state_dict())
    start = {n: p.detach().clone() for n, p in fused_model.named_parameters()}
    cfg = OptimConfig(lr=1e-2, lr_multipliers={"heads.*": 10.0})
    fused = build_optimizer(fused_model.named_parameters(), cfg)
    assert fused.defaults["fused"]
    groups = build_param_groups(loop_model.named_parameters(), cfg)
    loop = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, foreach=False)
    for _ in range(5):
        grads = {n: torch.randn_like(p) for n, p in fused_model.named_parameters() if p.requires_grad}
        for model, optimizer in ((fused_model, fused), (loop_model, loop)):
            for n, p in model.named_parameters():
                p.grad = grads.get(n)
            optimizer.step()
    for (name, a), b in zip(fused_model.named_parameters(), loop_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert (fused_model.heads.itm.weight - start["heads.itm.weight"]).abs().min() > 1e-3  # it trained
    assert torch.equal(fused_model.frozen.weight, start["frozen.weight"])


def test_schedules() -> None:
    lin = ScheduleConfig(name="linear", warmup=0.1, end_factor=0.0)
    total = 100
    assert lr_factor(0, total, lin) == pytest.approx(0.1)
    assert lr_factor(9, total, lin) == pytest.approx(1.0)
    assert lr_factor(10, total, lin) == pytest.approx(1.0)
    assert lr_factor(55, total, lin) == pytest.approx(0.5)
    assert lr_factor(100, total, lin) == pytest.approx(0.0)
    cos = ScheduleConfig(name="cosine", warmup=10, end_factor=0.1)
    assert lr_factor(10, total, cos) == pytest.approx(1.0)
    assert lr_factor(55, total, cos) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, total, cos) == pytest.approx(0.1)
    assert lr_factor(50, total, ScheduleConfig(name="constant", warmup=0)) == 1.0
    with pytest.raises(ValueError, match="whole"):
        ScheduleConfig(warmup=2.5)
    # GLIP's WarmupMultiStepLR: x0.1 at 67 % and 89 % of the steps (fractions), or at step counts
    step = ScheduleConfig(name="step", warmup=10, milestones=(0.67, 0.89), gamma=0.1)
    assert [lr_factor(s, total, step) for s in (9, 10, 66, 67, 88, 89, 99)] == pytest.approx(
        [1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    counts = ScheduleConfig(name="step", warmup=0, milestones=(30, 60), gamma=0.5)
    assert [lr_factor(s, total, counts) for s in (29, 30, 59, 60)] == pytest.approx([1.0, 0.5, 0.5, 0.25])
    with pytest.raises(ValueError, match="gamma"):
        ScheduleConfig(name="step", gamma=0.0)


def test_scheduler_drives_group_lrs() -> None:
    m = nn.ModuleDict({"backbone": nn.Linear(2, 2), "heads": nn.Linear(2, 2)})
    opt = build_optimizer(m.named_parameters(), OptimConfig(lr=1.0, lr_multipliers={"heads.": 5.0}))
    sched = build_scheduler(opt, ScheduleConfig(name="linear", warmup=2), total_steps=6)
    seen = []
    for _ in range(6):
        seen.append(sorted(g["lr"] for g in opt.param_groups))
        opt.step()
        sched.step()
    # warmup 1/2, 2/2, then linear decay over 4 steps: 1, 0.75, 0.5, 0.25
    expected = [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    for got, f in zip(seen, expected):
        assert got == pytest.approx(sorted([f, f, 5 * f, 5 * f]))
    assert math.isclose(opt.param_groups[0]["lr"], 0.0, abs_tol=1e-12)

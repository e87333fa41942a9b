"""Models name their parameter groups (``parameter_groups()``) and ``optim.lr_multipliers`` names
those groups. The group-named settings of the main job and of every shipped config give each
trainable parameter the same learning-rate multiplier and weight decay, in the same optimizer
groups in the same order, as the parameter-name patterns they replaced (written out below as the
reference)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml

from fibervl.config import PRESETS as FIBER_PRESETS
from fibervl.engine.optim import OptimConfig, build_param_groups, is_name_pattern
from fibervl.mainjob import job
from fibervl.mainjob.presets import get_job_preset
from fibervl.modeling.albef import ALBEF_PRESETS, AlbefModel
from fibervl.modeling.fiber import FiberModel
from fibervl.modeling.vlmo import VLMO_PRESETS, VlmoModel
from fibervl.tasks.pretrain_vlmo import MimTask

ROOT = Path(__file__).resolve().parents[2]

# ---- the reference: the name patterns the main job and the configs used before ------------
OLD_FUSED = {"heads.": 5.0, "cross_modal.": 5.0, ".i2t.": 5.0, ".t2i.": 5.0, "*.alpha": 20.0}
OLD_FINETUNE = {"heads.": 33.0, "cross_modal.": 33.0, "_pooler.": 33.0}
OLD_CAPTION = {**OLD_FINETUNE, ".t2i.": 33.0}
OLD_FINE = {"detector.": 3.0}
OLD_ALBEF_PRETRAIN = {"heads.": 5.0, ".cross.": 5.0}
OLD_VLMO_PRETRAIN = {"heads.": 5.0}
_PAPER_COARSE = {"heads.": 5.0, "cross_modal.": 5.0, ".i2t.": 5.0, ".t2i.": 5.0}
_PAPER_CLASSIFIER = {"heads.": 50.0, "cross_modal.": 5.0, ".i2t.": 5.0, ".t2i.": 5.0}
OLD_CONFIGS = {
    "albef-tiny_pretrain_shapes.yaml": {"heads.": 5.0, ".cross.": 5.0, ".cross_norm.": 5.0},
    "fiber-tiny_caption_shapes.yaml": {"heads.": 33.0, "cross_modal.": 33.0, ".t2i.": 33.0},
    "fiber-tiny_coarse_shapes.yaml": {"heads.": 5.0, "cross_modal.": 5.0, ".i2t.": 5.0, ".t2i.": 5.0},
    "fiber-tiny_fine_shapes.yaml": {"detector.": 3.0},
    "fiber-tiny_nlvr2_shapes.yaml": {"heads.": 33.0, "cross_modal.": 33.0},
    "fiber-tiny_retrieval_shapes.yaml": {"heads.": 5.0},
    "fiber-tiny_vqa_shapes.yaml": {"heads.": 33.0, "cross_modal.": 33.0},
    # "itc_" then, a substring; a key without '.' or a glob character is a group name now
    "vlmo-tiny_pretrain_shapes.yaml": {"heads.": 5.0, "_pooler.": 5.0, "*itc_*": 5.0},
    "paper/caption_gold.yaml": _PAPER_COARSE,
    "paper/caption_mle.yaml": _PAPER_COARSE,
    "paper/caption_scst.yaml": _PAPER_COARSE,
    "paper/coarse.yaml": _PAPER_COARSE,
    "paper/retrieval_coco_itc.yaml": _PAPER_COARSE,
    "paper/retrieval_coco_itm.yaml": _PAPER_COARSE,
    "paper/retrieval_flickr_itc.yaml": _PAPER_COARSE,
    "paper/retrieval_flickr_itm.yaml": _PAPER_COARSE,
    "paper/nlvr2.yaml": _PAPER_CLASSIFIER,
    "paper/vqa.yaml": _PAPER_CLASSIFIER,
    "paper/fine.yaml": {"text.": 0.1},
    "paper/ground_flickr30k.yaml": {"text.": 0.1},
    "paper/detect_odinw.yaml": {"text.": 0.1},
}
SHIPPED = sorted([*ROOT.glob("configs/*.yaml"), *ROOT.glob("configs/paper/*.yaml")])

_INIT = ("normal_", "trunc_normal_", "constant_", "zeros_", "ones_", "uniform_", "kaiming_uniform_", "xavier_uniform_")


def build(preset: str, prompt: bool = False) -> torch.nn.Module:
    """The preset's model with every head its family has (a superset of the parameters any
    stage trains) and, with ``prompt``, detection prompt offsets. Only names, shapes and modules
    matter here: the weights are left uninitialised and the vocabulary small, so that a base
    model builds in a fraction of a second."""
    for presets, model_cls in ((FIBER_PRESETS, FiberModel), (ALBEF_PRESETS, AlbefModel), (VLMO_PRESETS, VlmoModel)):
        if preset in presets:
            config = presets[preset]()
            break
    else:
        raise KeyError(preset)
    config = config.replace(text=dataclasses.replace(config.text, vocab_size=64))
    if getattr(config, "detection", None) is None:
        every_head = {FiberModel: ("itc", "itm", "mlm", "vqa", "nlvr2", "caption")}.get(
            model_cls, ("itc", "itm", "mlm", "vqa", "nlvr2"))
        config = config.replace(heads=every_head)
    elif prompt:
        config = config.replace(detection=dataclasses.replace(config.detection, prompt_tuning_tokens=4))
    with mock.patch.multiple(torch.nn.init, **{name: (lambda t, *a, **k: t) for name in _INIT}):
        return model_cls(config)


_MODELS: dict[tuple[str, bool], torch.nn.Module] = {}


def model(preset: str, prompt: bool = False) -> torch.nn.Module:
    if (preset, prompt) not in _MODELS:
        _MODELS[preset, prompt] = build(preset, prompt)
    return _MODELS[preset, prompt]


def layout(m: torch.nn.Module, lr_multipliers: dict, groups=None, extra=(), **optim) -> list[tuple]:
    """The optimizer groups in order: (name, lr, weight decay, parameter names)."""
    cfg = OptimConfig(lr=1.0, lr_multipliers=dict(lr_multipliers), **optim)
    named = [*m.named_parameters(), *extra]
    return [(g["name"], g["lr"], g["weight_decay"], g["param_names"]) for g in build_param_groups(named, cfg, groups)]


def assert_same(m: torch.nn.Module, old: dict, new: dict, extra=(), **optim) -> None:
    before = layout(m, old, None, extra, **optim)
    after = layout(m, new, m.parameter_groups(), extra, **optim)
    assert after == before
    assert {lr for _, lr, _, _ in before} > {1.0}, "the reference gives no parameter a multiplier: a vacuous check"


def job_stages(preset_name: str) -> list[tuple[str, str, dict, dict]]:
    """(stage, model preset, old patterns, new group settings) for every stage the main job
    trains with multipliers (coarse-itc uses none), for each model family."""
    p = get_job_preset(preset_name)
    albef, vlmo = p.family_models["albef"], p.family_models["vlmo"]
    stages = [("coarse", p.model, OLD_FUSED, job.FUSED_MULTIPLIERS),
              ("fine, grounding, refexp, detection", p.fine_model, OLD_FINE, job.FINE_MULTIPLIERS),
              ("caption", p.model, OLD_CAPTION, job.CAPTION_MULTIPLIERS),
              ("albef pretrain", albef, OLD_ALBEF_PRETRAIN, job.ALBEF_PRETRAIN_MULTIPLIERS),
              ("vlmo pretrain", vlmo, OLD_VLMO_PRETRAIN, job.VLMO_PRETRAIN_MULTIPLIERS)]
    for family, preset in (("fiber", p.model), ("albef", albef), ("vlmo", vlmo)):
        stages.append((f"{family} retrieval, vqa, nlvr2", preset, OLD_FINETUNE, job.FINETUNE_MULTIPLIERS[family]))
    return stages


@pytest.mark.parametrize("preset_name", ["quick", "default"])
def test_main_job_stages_train_as_before(preset_name):
    for stage, preset, old, new in job_stages(preset_name):
        assert not any(is_name_pattern(k) for k in new), f"{stage}: {new} spells out parameter names"
        m = model(preset)
        # VLMo's image-only stage also trains its task's mask token and pixel head (task.*)
        extra = [(f"task.{n}", p) for n, p in MimTask(m.config.hidden_size, 4).named_parameters()] \
            if isinstance(m, VlmoModel) else ()
        assert_same(m, old, new, extra)
        if preset == get_job_preset(preset_name).fine_model:
            assert_same(model(preset, prompt=True), old, new)


@pytest.mark.parametrize("name", sorted(OLD_CONFIGS))
def test_shipped_config_trains_as_before(name):
    data = yaml.safe_load((ROOT / "configs" / name).read_text(encoding="utf-8"))
    optim = dict(data["train"]["optim"])
    new = optim.pop("lr_multipliers")
    kept = {k: (tuple(v) if k == "betas" else v) for k, v in optim.items() if k in ("weight_decay", "no_decay")}
    m = model(data["model"]["preset"])
    assert_same(m, OLD_CONFIGS[name], new, **kept)
    if getattr(m, "detector", None) is not None:
        assert_same(model(data["model"]["preset"], prompt=True), OLD_CONFIGS[name], new, **kept)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_shipped_configs_name_groups_not_parameters(path):
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    mults = (data.get("train") or {}).get("optim", {}).get("lr_multipliers") or {}
    patterns = [k for k in mults if is_name_pattern(k)]
    assert not patterns, f"{path.name}: lr_multipliers spells out parameter names {patterns}"
    if mults:
        groups = model(data["model"]["preset"]).parameter_groups()
        assert set(mults) <= set(groups), f"{path.name}: {sorted(set(mults) - set(groups))} are not groups of the model"


def test_fiber_groups_are_what_their_names_say():
    m = model("fiber-tiny")
    names = {id(p): n for n, p in m.named_parameters()}

    def members(group):
        return {names[id(p)] for item in m.parameter_groups()[group]
                for p in ([item] if isinstance(item, torch.nn.Parameter) else item.parameters())}

    assert members("gates") == {n for n in names.values() if n.endswith(".alpha")} and members("gates")
    assert members("gates") < members("fusion")
    assert members("text_to_image") == {n for n in names.values() if ".t2i." in n}
    assert members("image_to_text") == {n for n in names.values() if ".i2t." in n}
    assert members("poolers") == {n for n in names.values() if n.startswith("cross_modal.") and "_pooler." in n}
    assert members("fusion") == members("text_to_image") | members("image_to_text") | members("cross_modal")


def test_unknown_group_names_the_models_groups():
    m = model("albef-tiny")
    with pytest.raises(ValueError, match=r"'gates' is not a parameter group of the model; its groups are: vision, text, "
                                         r"cross_attention, fusion, heads, itc_projections, temperature"):
        layout(m, {"heads": 5.0, "gates": 20.0}, m.parameter_groups())

"""``fibervl pretrain vlmo``: VLMo's stagewise pre-training in one run.

    fibervl pretrain vlmo --config configs/vlmo-tiny_pretrain_shapes.yaml stages.vl_steps=300

Stages, in order, each with its own step count (0 skips it) and its own engine run directory
``run_dir/<stage>`` (checkpoints, logs, and the stage's ``model/`` at its end):

1. ``mim``  image-only masked image modelling (attention + V-FFN + image embeddings train);
2. ``text`` text-only MLM (text embeddings + L-FFN + MLM head train; attention and vision frozen);
3. ``vl``   ITC + ITM with global hard negatives + MLM (the coarse task; everything trains).

See :mod:`fibervl.tasks.pretrain_vlmo`. Every stage reads the same image-caption pairs (a stage
ignores the modality it does not use). ``--resume`` continues the stage that was interrupted; a
stage whose ``model/`` exists is not run again (its weights are loaded). At the end ``run_dir/model``
holds the last stage's model (what ``model.init`` of a fine-tuning recipe takes) and
``metrics.json`` the dual-encoder retrieval metrics on ``eval_split``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.trainer import Trainer, TrainConfig
from ..experiment import ModelSpec
from ..modeling.factory import weights_drawn_from
from ..modeling.pretrained import WEIGHTS_NAME, load_state_strict, read_weights
from ..tasks.pretrain_coarse import CoarseObjectives, CoarsePretrainTask
from ..tasks.pretrain_vlmo import STAGES, MimTask, TextMlmTask, set_stage_trainable
from .common import export_model, recipe_train
from .image_text import CaptionData, image_text_setup, special_ids
from .registry import Recipe


@dataclass
class StageSettings:
    """Steps of each stage (0: skip it) and optional learning rates (0: ``train.optim.lr``)."""

    mim_steps: int = 0
    text_steps: int = 0
    vl_steps: int = 0
    mim_lr: float = 0.0
    text_lr: float = 0.0
    vl_lr: float = 0.0


@dataclass
class UnimodalObjectives:
    """``mask_ratio``: patches masked for MIM; ``norm_pix``: per-patch normalised pixel targets;
    ``mlm_prob``: tokens masked in the text stage."""

    mask_ratio: float = 0.4
    norm_pix: bool = True
    mlm_prob: float = 0.15


@dataclass
class VlmoPretrainConfig:
    """VLMo's stagewise pre-training: image-only MIM, text-only MLM, then ITC + ITM + MLM."""

    model: ModelSpec = field(default_factory=lambda: ModelSpec(preset="vlmo-tiny"))
    data: CaptionData = field(default_factory=CaptionData)
    stages: StageSettings = field(default_factory=StageSettings)
    unimodal: UnimodalObjectives = field(default_factory=UnimodalObjectives)
    objectives: CoarseObjectives = field(default_factory=CoarseObjectives)
    # train.max_steps is not used: each stage runs stages.<stage>_steps steps.
    train: TrainConfig = field(default_factory=lambda: recipe_train("pretrain-vlmo", max_steps=1))


def _stage_task(stage: str, cfg: VlmoPretrainConfig, mcfg, tokenizer):
    specials = special_ids(tokenizer)
    if stage == "mim":
        u = cfg.unimodal
        return MimTask(mcfg.hidden_size, mcfg.vision.patch_size, mcfg.vision.in_channels, u.mask_ratio, u.norm_pix)
    if stage == "text":
        return TextMlmTask(mcfg.text.vocab_size, mcfg.text.mask_token_id, specials, cfg.unimodal.mlm_prob)
    return CoarsePretrainTask(cfg.objectives, mcfg.hidden_size, mcfg.text.vocab_size, mcfg.text.mask_token_id, specials,
                              seed=cfg.train.seed, swap_table=cfg.objectives.swap_table(tokenizer))


def _stage_train_config(cfg: VlmoPretrainConfig, stage: str, steps: int) -> TrainConfig:
    lr = getattr(cfg.stages, f"{stage}_lr") or cfg.train.optim.lr
    return dataclasses.replace(cfg.train, run_dir=str(Path(cfg.train.run_dir) / stage), max_steps=steps, epochs=None,
                               optim=dataclasses.replace(cfg.train.optim, lr=lr))


def run(cfg: VlmoPretrainConfig) -> dict:
    """Run the stages with steps > 0 in order; returns ``{"stages": {stage: summary}, "eval": metrics}``."""
    if cfg.train.resume not in ("", "auto"):
        raise ValueError("a staged run resumes with --resume (resume=auto); each stage finds its own checkpoints")
    steps = {s: getattr(cfg.stages, f"{s}_steps") for s in STAGES}
    if any(n < 0 for n in steps.values()) or not any(steps.values()):
        raise ValueError(f"pretrain vlmo runs its stages by their own step counts, >= 0 with at least one > 0 "
                         f"(got {steps}; train.max_steps is not used): give stages.mim_steps=N "
                         "stages.text_steps=N stages.vl_steps=N, or a config that sets them")
    setup = image_text_setup(cfg.model, cfg.data, cfg.train, "vlmo")
    tokenizer, model, evaluate = setup.tokenizer, setup.model, setup.evaluate
    mcfg = model.config

    summaries: dict[str, dict] = {}
    for stage in STAGES:
        if not steps[stage]:
            continue
        stage_cfg = _stage_train_config(cfg, stage, steps[stage])
        done = Path(stage_cfg.run_dir) / "model"
        if cfg.train.resume and (done / WEIGHTS_NAME).is_file():
            load_state_strict(model, read_weights(done / WEIGHTS_NAME), str(done / WEIGHTS_NAME))
            summaries[stage] = {"skipped": f"loaded the finished stage from {done}"}
            continue
        set_stage_trainable(model, stage)
        with weights_drawn_from(cfg.model.seed + 1):  # the MIM head's weights, reproducibly
            task = _stage_task(stage, cfg, mcfg, tokenizer)
        trainer = Trainer(stage_cfg, model, task, setup.train, collate_fn=setup.collate,
                          evaluate=evaluate if stage == "vl" else None, config_snapshot=cfg)
        summaries[stage] = trainer.fit()
        export_model(model, stage_cfg.run_dir, tokenizer=tokenizer)
    set_stage_trainable(model, "vl")  # the exported model is whole again
    metrics = evaluate(model)
    export_model(model, cfg.train.run_dir, {"eval_split": cfg.data.eval_split, **metrics}, tokenizer=tokenizer,
                 data=cfg.data)
    return {"stages": summaries, "eval": metrics}


RECIPE = Recipe("vlmo", "VLMo's stagewise pre-training (the baseline: MIM, text MLM, then image-text)",
                VlmoPretrainConfig, run, stage="pretrain")

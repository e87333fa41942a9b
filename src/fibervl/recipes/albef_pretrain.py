"""``fibervl pretrain albef``: ALBEF pre-training (ITC and MLM with momentum distillation, ITM
with hard negatives) on image-text pairs.

    fibervl pretrain albef --config configs/albef-tiny_pretrain_shapes.yaml train.max_steps=200

The same data and evaluation as ``fibervl pretrain coarse`` (a Karpathy-format captions split,
or a shapes data set; dual-encoder R@1/5/10 on ``eval_split``), so the two are comparable. The run
directory holds the engine's checkpoints (with the momentum model and the queues: ``--resume``
continues exactly) and, at the end, ``model/`` (loadable through
:func:`fibervl.modeling.factory.create_model`, usable as ``model.init`` of the fine-tuning
recipes) and ``metrics.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engine.trainer import TrainConfig
from ..experiment import ModelSpec
from ..tasks.pretrain_albef import AlbefObjectives, AlbefPretrainTask
from .common import recipe_train
from .image_text import CaptionData, image_text_setup, special_ids, train_and_export
from .registry import Recipe


@dataclass
class AlbefPretrainConfig:
    """ALBEF pre-training: ITC and MLM with momentum distillation, ITM with hard negatives."""

    model: ModelSpec = field(default_factory=lambda: ModelSpec(preset="albef-tiny"))
    data: CaptionData = field(default_factory=CaptionData)
    objectives: AlbefObjectives = field(default_factory=AlbefObjectives)
    train: TrainConfig = field(default_factory=lambda: recipe_train("pretrain-albef", max_steps=1000))


def run(cfg: AlbefPretrainConfig) -> dict:
    """Pre-train, evaluate ITC retrieval on ``data.eval_split``, export ``run_dir/model``.
    Returns the trainer's summary with the final metrics under ``"eval"``."""
    setup = image_text_setup(cfg.model, cfg.data, cfg.train, "albef")
    return train_and_export(cfg, setup, AlbefPretrainTask(setup.model, cfg.objectives, special_ids(setup.tokenizer)))


RECIPE = Recipe("albef", "ALBEF pre-training (the baseline; same data and evaluation as coarse)",
                AlbefPretrainConfig, run, stage="pretrain")

"""``fibervl pretrain albef``: ALBEF pre-training (ITC and MLM with momentum distillation, ITM
with hard negatives) on image-text pairs.

    fibervl pretrain albef --config configs/albef-tiny_pretrain_shapes.yaml train.max_steps=200

The same data and evaluation as ``fibervl pretrain coarse`` (a Karpathy-format captions split,
or a shapes data set; dual-encoder R@1/5/10 on ``eval_split``), so the two are comparable. The run
directory holds the engine's checkpoints (with the momentum model and the queues: ``--resume``
continues exactly) and, at the end, ``model/`` (loadable through
:func:`fibervl.modeling.families.load_pretrained`, usable as ``model.init`` of the fine-tuning
recipes) and ``metrics.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engine.trainer import TrainConfig
from ..experiment import ModelSpec
from ..tasks.pretrain_albef import AlbefObjectives, AlbefPretrainTask
from .coarse_pretrain import CaptionData, image_text_setup, special_ids, train_and_export
from .common import parse_run_cli, recipe_train


@dataclass
class AlbefPretrainConfig:
    model: ModelSpec = field(default_factory=lambda: ModelSpec(preset="albef-tiny"))
    data: CaptionData = field(default_factory=CaptionData)
    objectives: AlbefObjectives = field(default_factory=AlbefObjectives)
    train: TrainConfig = field(default_factory=lambda: recipe_train("pretrain-albef", max_steps=1000))


def run(cfg: AlbefPretrainConfig) -> dict:
    """Pre-train, evaluate ITC retrieval on ``data.eval_split``, export ``run_dir/model``.
    Returns the trainer's summary with the final metrics under ``"eval"``."""
    setup = image_text_setup(cfg.model, cfg.data, cfg.train, "albef")
    return train_and_export(cfg, setup, AlbefPretrainTask(setup.model, cfg.objectives, special_ids(setup.tokenizer)))


def _pretrain_command(argv: list[str]) -> int:
    cfg = parse_run_cli(AlbefPretrainConfig, argv)
    summary = run(cfg)
    print("  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary["eval"].items()))
    return 0


COMMANDS = {"pretrain": _pretrain_command}

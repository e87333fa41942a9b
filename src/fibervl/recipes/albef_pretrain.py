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

from ..engine.trainer import Trainer, TrainConfig
from ..experiment import ModelSpec
from ..tasks.pretrain_albef import AlbefObjectives, AlbefPretrainTask
from .coarse_pretrain import CaptionData, image_text_setup, special_ids
from .common import export_model, final_metrics, parse_run_cli


@dataclass
class AlbefPretrainConfig:
    model: ModelSpec = field(default_factory=lambda: ModelSpec(preset="albef-tiny"))
    data: CaptionData = field(default_factory=CaptionData)
    objectives: AlbefObjectives = field(default_factory=AlbefObjectives)
    train: TrainConfig = field(default_factory=TrainConfig)


def run(cfg: AlbefPretrainConfig) -> dict:
    """Pre-train, evaluate ITC retrieval on ``data.eval_split``, export ``run_dir/model``.
    Returns the trainer's summary with the final metrics under ``"eval"``."""
    setup = image_text_setup(cfg.model, cfg.data, cfg.train.precision, "albef")
    model = setup.model
    task = AlbefPretrainTask(model, cfg.objectives, special_ids(setup.tokenizer))
    trainer = Trainer(cfg.train, model, task, setup.train, collate_fn=setup.collate, evaluate=setup.evaluate,
                      config_snapshot=cfg)
    summary = trainer.fit()
    metrics = final_metrics(summary, setup.evaluate, model)
    export_model(model, cfg.train.run_dir, {"eval_split": cfg.data.eval_split, **metrics})
    summary["eval"] = metrics
    return summary


def _pretrain_command(argv: list[str]) -> int:
    cfg = parse_run_cli(AlbefPretrainConfig, argv)
    summary = run(cfg)
    print("  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary["eval"].items()))
    return 0


COMMANDS = {"pretrain": _pretrain_command}

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

from ..data import ProcessedDataset, Processor
from ..data.transforms import train_transforms
from ..engine.trainer import Trainer, TrainConfig
from ..experiment import ModelSpec, build_model, load_tokenizer
from ..tasks.pretrain_albef import AlbefObjectives, AlbefPretrainTask
from ..tasks.retrieval import evaluate_itc_retrieval
from .coarse_pretrain import CaptionData, caption_reader
from .common import PairCollator, export_model, parse_run_cli


@dataclass
class AlbefPretrainConfig:
    model: ModelSpec = field(default_factory=lambda: ModelSpec(preset="albef-tiny"))
    data: CaptionData = field(default_factory=CaptionData)
    objectives: AlbefObjectives = field(default_factory=AlbefObjectives)
    train: TrainConfig = field(default_factory=TrainConfig)


def run(cfg: AlbefPretrainConfig) -> dict:
    """Pre-train, evaluate ITC retrieval on ``data.eval_split``, export ``run_dir/model``.
    Returns the trainer's summary with the final metrics under ``"eval"``."""
    tokenizer = load_tokenizer(cfg.data)
    model = build_model(cfg.model, tokenizer)
    mcfg = model.config
    if getattr(mcfg, "family", "fiber") != "albef":
        raise ValueError(f"pretrain albef needs an ALBEF model (model.preset=albef-tiny, ...), got {mcfg.name!r}")
    image_size = cfg.data.image_size or mcfg.vision.image_size
    max_len = cfg.data.max_text_len or mcfg.text.max_text_len
    train = ProcessedDataset(caption_reader(cfg.data, cfg.data.train_split), Processor(train_transforms(image_size)))
    eval_reader = caption_reader(cfg.data, cfg.data.eval_split)
    bf16 = cfg.train.precision == "bf16"

    def evaluate(m) -> dict[str, float]:
        return evaluate_itc_retrieval(m, tokenizer, eval_reader, image_size, max_len, limit=cfg.data.num_eval, bf16=bf16)

    task = AlbefPretrainTask(model, cfg.objectives,
                             (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id))
    trainer = Trainer(cfg.train, model, task, train, collate_fn=PairCollator(tokenizer, max_len), evaluate=evaluate,
                      config_snapshot=cfg)
    summary = trainer.fit()
    metrics = evaluate(model)
    export_model(model, cfg.train.run_dir, {"eval_split": cfg.data.eval_split, **metrics})
    summary["eval"] = metrics
    return summary


def _pretrain_command(argv: list[str]) -> int:
    cfg = parse_run_cli(AlbefPretrainConfig, argv)
    summary = run(cfg)
    print("  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary["eval"].items()))
    return 0


COMMANDS = {"pretrain": _pretrain_command}

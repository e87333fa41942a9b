"""``fibervl pretrain coarse``: ITC + ITM (global hard negatives) + MLM on image-text pairs.

    fibervl pretrain coarse --config configs/fiber-tiny_coarse_shapes.yaml train.max_steps=200

Data: a captions split in the Karpathy format (the shapes set writes one); every (image,
caption) pair is a sample. Evaluation: dual-encoder (ITC) retrieval R@1/5/10 on ``eval_split``.
The run directory holds the engine's checkpoints (``--resume`` continues exactly) and, at the
end, ``model/`` (loadable with ``FiberModel.from_pretrained``) and ``metrics.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ..data import KarpathyCaptions, ProcessedDataset, Processor
from ..data.shapes import ShapesDataset
from ..data.transforms import train_transforms
from ..engine.trainer import Trainer, TrainConfig
from ..experiment import DataSpec, ModelSpec, build_model, load_tokenizer
from ..tasks.pretrain_coarse import CoarseObjectives, CoarsePretrainTask
from ..tasks.retrieval import evaluate_itc_retrieval
from .common import parse_run_cli, PairCollator, export_model, final_metrics


@dataclass
class CaptionData(DataSpec):
    """``captions``: a Karpathy-format file (empty: ``root`` is a shapes data set);
    ``image_root``: what its ``filepath/filename`` entries are relative to (default ``root``)."""

    captions: str = ""
    image_root: str = ""
    train_split: str = "train"
    eval_split: str = "val"


@dataclass
class CoarseConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: CaptionData = field(default_factory=CaptionData)
    objectives: CoarseObjectives = field(default_factory=CoarseObjectives)
    train: TrainConfig = field(default_factory=TrainConfig)


def caption_reader(data: CaptionData, split: str) -> KarpathyCaptions:
    if not data.captions:
        return ShapesDataset(data.root).captions(split)
    return KarpathyCaptions(data.captions, data.image_root or data.root, split)


def run(cfg: CoarseConfig) -> dict:
    tokenizer = load_tokenizer(cfg.data)
    model = build_model(cfg.model, tokenizer)
    mcfg = model.config
    image_size = cfg.data.image_size or mcfg.vision.image_size
    max_len = cfg.data.max_text_len or mcfg.text.max_text_len
    train = ProcessedDataset(caption_reader(cfg.data, cfg.data.train_split), Processor(train_transforms(image_size)))
    eval_reader = caption_reader(cfg.data, cfg.data.eval_split)
    bf16 = cfg.train.precision == "bf16"

    def evaluate(m) -> dict[str, float]:
        return evaluate_itc_retrieval(m, tokenizer, eval_reader, image_size, max_len, limit=cfg.data.num_eval, bf16=bf16)

    task = CoarsePretrainTask(
        cfg.objectives, mcfg.hidden_size, mcfg.text.vocab_size, mcfg.text.mask_token_id,
        (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id),
    )
    trainer = Trainer(cfg.train, model, task, train, collate_fn=PairCollator(tokenizer, max_len), evaluate=evaluate,
                      config_snapshot=cfg)
    summary = trainer.fit()
    metrics = final_metrics(summary, evaluate, model)
    export_model(model, cfg.train.run_dir, {"eval_split": cfg.data.eval_split, **metrics})
    summary["eval"] = metrics
    return summary


def _pretrain_command(argv: list[str]) -> int:
    cfg = parse_run_cli(CoarseConfig, argv)
    summary = run(cfg)
    print("  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary["eval"].items()))
    return 0


COMMANDS = {"pretrain": _pretrain_command}

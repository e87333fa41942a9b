"""``fibervl pretrain fine``: fine-grained pre-training of the grounding detector on
image-text-box data (phrase grounding + referring expressions + detection prompts).

    fibervl pretrain fine --config configs/fiber-tiny_fine_shapes.yaml model.init=runs/coarse/model

``model.init``: a coarse ``model/`` directory; every weight it shares with the fine model is
re-used (backbones, fusion), the rest (detector, stage feature norms) starts fresh; the report of
new and unused weights is printed and saved in ``run_dir/init_report.json``. Empty: from scratch
(the paper's "w/o coarse-grained VLP" ablation). At the end: ``run_dir/model`` and
``metrics.json`` with grounding R@k, REC accuracy and detection AP (seen classes on
``eval_split``; zero-shot on the held-out class names of ``zero_shot_split``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import ConcatDataset

from ..data import ProcessedDataset
from ..data.shapes import ShapesDataset
from ..data.transforms import detection_train_transforms
from ..engine.trainer import Trainer, TrainConfig
from ..experiment import DataSpec, ModelSpec, build_model_compatible, load_tokenizer, summarize_keys
from ..tasks.grounding import (
    DetectionPromptDataset, FineCollator, FineGrainedTask, FineObjectives, evaluate_detection, evaluate_grounding, evaluate_refexp,
    make_processor,
)
from .common import parse_run_cli, export_model, final_metrics, recipe_train


@dataclass
class FineData(DataSpec):
    """A shapes data set ``root``: which training sources to mix, and evaluation splits.

    ``max_classes``: classes per detection prompt (present ones + random negatives; 0 = all).
    ``train_sizes``: random multi-scale training sizes (shorter side; empty = the model's size).
    ``normalization``: "imagenet" (trained here) or "official" (converted official checkpoints).
    ``chunk_size``: class names per evaluation prompt (LVIS protocol 40).
    ``eval_batch_size``: images per evaluation forward.
    """

    grounding: bool = True
    refexp: bool = True
    detection: bool = True
    max_classes: int = 6
    train_sizes: tuple[int, ...] = ()
    normalization: str = "imagenet"
    eval_split: str = "val"
    zero_shot_split: str = "test"
    chunk_size: int = 40
    eval_batch_size: int = 16


@dataclass
class FineConfig:
    model: ModelSpec = field(default_factory=lambda: ModelSpec(preset="fiber-tiny-fine"))
    data: FineData = field(default_factory=FineData)
    objectives: FineObjectives = field(default_factory=FineObjectives)
    train: TrainConfig = field(default_factory=lambda: recipe_train("pretrain-fine", max_steps=100))


def sizes_of(data: FineData, model_config) -> tuple[int, int]:
    image_size = data.image_size or model_config.vision.image_size
    max_len = data.max_text_len or model_config.detection.max_query_len
    return image_size, max_len


def training_set(data: FineData, image_size: int, shapes: ShapesDataset, split: str = "train"):
    """The mixed fine-grained training set of the sources ``data`` switches on."""
    sizes = data.train_sizes or (image_size,)
    skip = data.skip_bad_records
    processor = make_processor(detection_train_transforms(sizes, max(sizes)), data.normalization, skip_bad=skip)
    parts = []
    if data.grounding:
        parts.append(ProcessedDataset(shapes.grounding(split, skip_bad=skip), processor))
    if data.refexp:
        parts.append(ProcessedDataset(shapes.refexp(split, skip_bad=skip), processor))
    if data.detection:
        det = shapes.detection(split, skip_bad=skip)
        parts.append(DetectionPromptDataset(det, det.categories, processor, max_classes=data.max_classes))
    if not parts:
        raise ValueError("no training data: switch on data.grounding, data.refexp or data.detection")
    return ConcatDataset(parts)


def evaluate_all(model, tokenizer, data: FineData, shapes: ShapesDataset, image_size: int, max_len: int,
                 which: tuple[str, ...] = ("grounding", "refexp", "detection", "zero_shot")) -> dict[str, float]:
    """Flat metrics: ``ground_r1/5/10``, ``rec_acc`` (and ``rec_acc_seen`` / ``rec_acc_held_out``:
    expressions without and with a held-out name, which only test files have), ``det_AP..`` (seen
    classes on ``eval_split``), ``zs_AP..`` (held-out names on ``zero_shot_split``)."""
    kw = dict(image_size=image_size, max_len=max_len, limit=data.num_eval, batch_size=data.eval_batch_size,
              normalization=data.normalization)
    skip = data.skip_bad_records
    out: dict[str, float] = {}
    if "grounding" in which:
        reader = shapes.grounding(data.eval_split, skip_bad=skip)
        out.update({f"ground_{k}": v for k, v in evaluate_grounding(model, tokenizer, reader, **kw).items()})
    if "refexp" in which:
        m = evaluate_refexp(model, tokenizer, shapes.refexp(data.eval_split, skip_bad=skip),
                            group_of=shapes.expression_group, **kw)
        out.update({f"rec_{k}": v for k, v in m.items()})
    if "detection" in which:
        m = evaluate_detection(model, tokenizer, shapes.detection(data.eval_split, skip_bad=skip),
                               shapes.seen_category_ids, chunk_size=data.chunk_size, **kw)
        out.update({f"det_{k}": v for k, v in m.items()})
    if "zero_shot" in which:
        m = evaluate_detection(model, tokenizer, shapes.detection(data.zero_shot_split, skip_bad=skip),
                               shapes.held_out_category_ids, chunk_size=data.chunk_size, **kw)
        out.update({f"zs_{k}": v for k, v in m.items()})
    return out


def possible_evaluations(shapes: ShapesDataset, which: tuple[str, ...]) -> tuple[str, ...]:
    """``which`` without ``zero_shot`` when the data set holds no class out of training (there
    is nothing to name zero-shot), saying so on stderr."""
    if "zero_shot" in which and not shapes.held_out_category_ids:
        print(f"zero-shot detection left out: {shapes.root} has no held-out classes", file=sys.stderr)
        return tuple(w for w in which if w != "zero_shot")
    return which


def init_report_text(report: dict) -> str:
    if not report["init"]:
        return "initialised from scratch"
    new, unused = summarize_keys(report["new"]), summarize_keys(report["unused"])
    return (f"initialised from {report['init']}: {len(report['new'])} new weights {new}; "
            f"{len(report['unused'])} unused weights of the source {unused}")


def run(cfg: FineConfig, train_data=None, eval_which=("grounding", "refexp", "detection", "zero_shot")) -> dict:
    """Train on ``train_data`` (default: :func:`training_set` of ``cfg.data``) and evaluate."""
    tokenizer = load_tokenizer(cfg.data)
    model, report = build_model_compatible(cfg.model, tokenizer)
    if model.config.detection is None:
        raise ValueError(f"model preset {cfg.model.preset!r} has no detection config")
    print(init_report_text(report), flush=True)
    run_dir = Path(cfg.train.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "init_report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    image_size, max_len = sizes_of(cfg.data, model.config)
    shapes = ShapesDataset(cfg.data.root)
    train = train_data if train_data is not None else training_set(cfg.data, image_size, shapes)
    eval_which = possible_evaluations(shapes, eval_which)

    def evaluate(m) -> dict[str, float]:
        return evaluate_all(m, tokenizer, cfg.data, shapes, image_size, max_len, eval_which)

    trainer = Trainer(cfg.train, model, FineGrainedTask(cfg.objectives), train, collate_fn=FineCollator(tokenizer, max_len),
                      evaluate=evaluate, config_snapshot=cfg)
    summary = trainer.fit()
    metrics = final_metrics(summary, evaluate, model)
    export_model(model, cfg.train.run_dir, {"init": cfg.model.init, **metrics}, tokenizer=tokenizer, data=cfg.data)
    summary["eval"] = metrics
    summary["init_report"] = report
    return summary


def print_metrics(metrics: dict) -> None:
    print("  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))


def _pretrain_command(argv: list[str]) -> int:
    cfg = parse_run_cli(FineConfig, argv)
    print_metrics(run(cfg)["eval"])
    return 0


COMMANDS = {"pretrain": _pretrain_command}

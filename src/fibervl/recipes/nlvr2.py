"""``fibervl finetune|evaluate|predict nlvr2``: natural language for visual reasoning (pairs).

    fibervl finetune nlvr2 --config configs/fiber-tiny_nlvr2_shapes.yaml --init RUN_OR_MODEL
    fibervl finetune nlvr2 --init RUN --data-root NLVR2_DIR data.format=nlvr2 data.image_root=IMAGES
    fibervl evaluate nlvr2 --model RUN/model --data-root DIR [--split test]
    fibervl predict nlvr2 --model RUN/model --left a.jpg --right b.jpg --text "..."

    fibervl finetune nlvr2 --init RUN --train-data nlvr2:nlvr2/data/train.json:nlvr2/images \
        --eval-data nlvr2:nlvr2/data/dev.json:nlvr2/images

Data: NLVR2 sources (:mod:`fibervl.data.sources`), or the older keys: with ``data.format=shapes``
(default) ``data.root`` is a shapes set; with ``nlvr2`` it holds NLVR2's ``{split}.json`` files
(``train``, ``dev``, ``test1``) and ``image_root`` (default ``root``) the split image folders.
Training transforms never flip (left/right statements).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..data.sources import DataSource, open_eval, training_reader
from ..data.transforms import train_transforms
from ..engine import distributed as D
from ..engine.precision import uses_bf16
from ..engine.trainer import Trainer, TrainConfig
from ..experiment import DataSpec, ModelSpec, build_task_model, load_tokenizer
from ..predict.cli import main as predict_main
from ..tasks.nlvr2 import Nlvr2Collator, Nlvr2Task, evaluate_nlvr2
from .common import (evaluation_processes, parse_run_cli, export_task_model, fused_training_data, load_model_dir,
                     warn_truncated, final_metrics, recipe_train)

FINETUNE_FLAGS = {"--init": "model.init", "--data-root": "data.root", "--image-root": "data.image_root",
                  "--run-dir": "train.run_dir", "--max-steps": "train.max_steps", "--tokenizer": "data.tokenizer"}
EVALUATE_FLAGS = {"--model": "model.init", "--data-root": "data.root", "--image-root": "data.image_root",
                  "--split": "data.eval_split", "--num-eval": "data.num_eval"}


@dataclass
class Nlvr2Data(DataSpec):
    format: str = "shapes"  # "shapes" or "nlvr2"
    image_root: str = ""
    image_ext: str = ".png"
    train_split: str = "train"
    eval_split: str = "val"
    # train on cached image prefixes (needs model.freeze_prefix; no image augmentation): tasks/prefix_cache.py
    cache_image_prefix: bool = False

    def legacy_source(self) -> DataSource:
        if self.format == "shapes":
            return DataSource("shapes", self.root)
        if self.format == "nlvr2":
            return DataSource("nlvr2", str(Path(self.root) / "{split}.json"), self.image_root or self.root,
                              image_ext=self.image_ext)
        raise ValueError(f"data.format must be 'shapes' or 'nlvr2', got {self.format!r}")


@dataclass
class Nlvr2Config:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: Nlvr2Data = field(default_factory=Nlvr2Data)
    train: TrainConfig = field(default_factory=lambda: recipe_train("finetune-nlvr2", max_steps=100))


def nlvr2_reader(data: Nlvr2Data, split: str, seed: int = 0):
    """The statements of ``split``: at ``data.train_split`` the training sources mixed by
    weight, at any other split the evaluation source."""
    if split == data.train_split:
        return training_reader(data.train_sources(), "nlvr2", split, data.skip_bad_records, seed, "finetune nlvr2")
    return open_eval(data.eval_source(), "nlvr2", split, data.skip_bad_records, "evaluate nlvr2")


def _sizes(cfg, model) -> tuple[int, int]:
    return cfg.data.image_size or model.config.vision.image_size, cfg.data.max_text_len or model.config.text.max_text_len


def _eval_samples(cfg: Nlvr2Config, split: str):
    samples = list(nlvr2_reader(cfg.data, split))
    return samples[:cfg.data.num_eval] if cfg.data.num_eval else samples


def run(cfg: Nlvr2Config) -> dict:
    tokenizer = load_tokenizer(cfg.data, cfg.model.init)
    model, new = build_task_model(cfg.model, tokenizer, new_heads=("nlvr2",))
    if cfg.model.init:
        print(f"new weights (not loaded from {cfg.model.init}): {new}")
    image_size, max_len = _sizes(cfg, model)
    train_reader = nlvr2_reader(cfg.data, cfg.data.train_split, cfg.train.seed)
    warn_truncated(tokenizer, (s.text for s in train_reader), max_len, "training statements")
    eval_samples = _eval_samples(cfg, cfg.data.eval_split)
    bf16 = uses_bf16(cfg.train.precision, cfg.train.device)

    def evaluate(m) -> dict[str, float]:
        return evaluate_nlvr2(m, tokenizer, eval_samples, image_size, max_len, bf16=bf16)

    train, cache = fused_training_data(train_reader, train_transforms(image_size, flip=False), model,
                                       cfg.data.cache_image_prefix, image_size, bf16, cfg.train.device)
    summary = Trainer(cfg.train, model, Nlvr2Task(), train, collate_fn=Nlvr2Collator(tokenizer, max_len, cache),
                      evaluate=evaluate, config_snapshot=cfg).fit()
    metrics = final_metrics(summary, evaluate, model)
    export_task_model(model, tokenizer, cfg.train.run_dir, {"eval_split": cfg.data.eval_split, **metrics},
                      data=cfg.data)
    summary["eval"] = metrics
    return summary


def _print(metrics: dict) -> None:
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in metrics.items()}))


def _finetune(argv: list[str]) -> int:
    cfg = parse_run_cli(Nlvr2Config, argv, FINETUNE_FLAGS)
    _print(run(cfg)["eval"])
    return 0


def _evaluate(argv: list[str]) -> int:
    from ..engine.config import parse_cli

    cfg, _ = parse_cli(Nlvr2Config, argv, EVALUATE_FLAGS)
    if not cfg.model.init:
        raise ValueError("evaluate needs --model DIR (a fine-tuned NLVR2 model or run directory)")
    with evaluation_processes(cfg.train.device) as device:  # under torchrun: items split across processes
        model, tokenizer, _ = load_model_dir(cfg.model.init, device=str(device))
        image_size, max_len = _sizes(cfg, model)
        metrics = evaluate_nlvr2(model, tokenizer, _eval_samples(cfg, cfg.data.eval_split), image_size, max_len,
                                 bf16=uses_bf16(cfg.train.precision, cfg.train.device))
        if D.get_rank() == 0:
            _print({"split": cfg.data.eval_source().split or cfg.data.eval_split, **metrics})
    return 0


COMMANDS = {"finetune": _finetune, "evaluate": _evaluate, "predict": lambda argv: predict_main("nlvr2", argv)}

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

from dataclasses import dataclass, field
from pathlib import Path

from ..data import Nlvr2Collator
from ..data.sources import DataSource, open_eval, training_reader
from ..data.transforms import train_transforms
from ..engine.precision import uses_bf16
from ..engine.trainer import Trainer, TrainConfig
from ..experiment import DataSpec, ModelSpec, load_tokenizer, split_name
from ..tasks.nlvr2 import Nlvr2Task, evaluate_nlvr2
from .common import (evaluation_processes, export_task_model, fused_training_data, load_model_dir, required_model,
                     warn_truncated, final_metrics, recipe_train)
from .registry import Recipe


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
    """NLVR2 fine-tuning (a statement about a pair of images: true or false) and its accuracy."""

    model: ModelSpec = field(default_factory=ModelSpec)
    data: Nlvr2Data = field(default_factory=Nlvr2Data)
    train: TrainConfig = field(default_factory=lambda: recipe_train("finetune-nlvr2", max_steps=100))


def nlvr2_reader(data: Nlvr2Data, split: str, seed: int = 0):
    """The statements of ``split``: at ``data.train_split`` the training sources mixed by
    weight, at any other split the evaluation source."""
    if split == data.train_split:
        return training_reader(data.train_sources(), "nlvr2", split, data.skip_bad_records, seed, "finetune nlvr2")
    return open_eval(data.eval_source(), "nlvr2", split, data.skip_bad_records, "evaluate nlvr2")


def _eval_samples(cfg: Nlvr2Config, split: str):
    samples = list(nlvr2_reader(cfg.data, split))
    return samples[:cfg.data.num_eval] if cfg.data.num_eval else samples


def run(cfg: Nlvr2Config) -> dict:
    tokenizer = load_tokenizer(cfg.data, cfg.model.init)
    model, loaded = cfg.model.build(tokenizer, new_heads=("nlvr2",), with_report=True)
    if cfg.model.init:
        print(f"new weights (not loaded from {cfg.model.init}): {loaded.new}")
    image_size, max_len = cfg.data.input_sizes(model.config)
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


def evaluate_saved(cfg: Nlvr2Config) -> dict:
    """``evaluate nlvr2``: the accuracy of the saved model ``--model DIR`` on the evaluation
    split; under torchrun the statements are split across the processes and gathered."""
    required_model(cfg, "nlvr2")
    with evaluation_processes(cfg.train.device) as device:
        model, tokenizer, _ = load_model_dir(cfg.model.init, device=str(device))
        image_size, max_len = cfg.data.input_sizes(model.config)
        metrics = evaluate_nlvr2(model, tokenizer, _eval_samples(cfg, cfg.data.eval_split), image_size, max_len,
                                 bf16=uses_bf16(cfg.train.precision, cfg.train.device))
    return {"split": split_name(cfg.data.eval_source(), cfg.data.eval_split), **metrics}


RECIPE = Recipe("nlvr2", "natural language for visual reasoning (NLVR2 accuracy)", Nlvr2Config, run,
                evaluate=evaluate_saved, predict=True, train_aliases={"--image-root": "data.image_root"},
                evaluate_aliases={"--image-root": "data.image_root"})

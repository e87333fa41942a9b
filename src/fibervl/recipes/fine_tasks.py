"""``finetune`` / ``evaluate`` / ``predict`` for the three fine-grained tasks (``ground``,
``refexp``, ``detect``); :mod:`.grounding`, :mod:`.refexp` and :mod:`.detection` expose them.

    fibervl finetune ground  --config configs/fiber-tiny_fine_shapes.yaml model.init=RUN/model train.run_dir=...
    fibervl evaluate ground  model.init=RUN/model data.root=data/shapes data.eval_split=test
    fibervl predict  ground  --model RUN/model (--image x.jpg | --images DIR) --text "a red star" [--phrases "red star"]
    fibervl predict  refexp  --model RUN/model (--image x.jpg | --images DIR) --text "the small red star"
    fibervl predict  detect  --model RUN/model (--image x.jpg | --images DIR) --classes "star,heart,circle"

``finetune`` trains the task's data alone (the fine pre-training recipe with one source switched
on) starting from ``model.init`` (usually a ``pretrain fine`` model); ``evaluate`` loads
``model.init`` and prints the task's metrics on ``data.eval_split`` (detection: seen classes, and
zero-shot AP on the held-out names of ``data.zero_shot_split``, when the data set holds some
out of training). ``predict`` is :mod:`fibervl.predict.cli`: JSON with boxes in the pixels of the
image as shown (EXIF orientation applied) and a PNG with labelled boxes per image (``--out``,
default ``runs/predict-<task>/<image stem>_<task>.png`` under the current directory).
"""

from __future__ import annotations

import dataclasses

from .common import parse_run_cli
from ..data.shapes import ShapesDataset
from ..experiment import load_tokenizer
from ..modeling.fiber import FiberModel
from ..predict.cli import main as predict_main
from .fine_pretrain import FineConfig, evaluate_all, possible_evaluations, print_metrics, run, sizes_of

# task -> (training sources switched on, evaluations)
TASKS = {
    "ground": (("grounding",), ("grounding",)),
    "refexp": (("refexp",), ("refexp",)),
    "detect": (("detection",), ("detection", "zero_shot")),
}
SOURCES = ("grounding", "refexp", "detection")


def _task_config(task: str, argv: list[str]) -> FineConfig:
    cfg = parse_run_cli(FineConfig, argv)
    train_sources, _ = TASKS[task]
    cfg.data = dataclasses.replace(cfg.data, **{s: s in train_sources for s in SOURCES})
    if cfg.train.run_dir == FineConfig().train.run_dir:  # the pre-training default names its own command
        cfg.train.run_dir = f"runs/finetune-{task}"
    return cfg


def finetune(task: str, argv: list[str]) -> int:
    cfg = _task_config(task, argv)
    print_metrics(run(cfg, eval_which=TASKS[task][1])["eval"])
    return 0


def evaluate(task: str, argv: list[str]) -> int:
    cfg = _task_config(task, argv)
    if not cfg.model.init:
        raise SystemExit("evaluate needs model.init=DIR (a saved fine-grained model)")
    model = FiberModel.from_pretrained(cfg.model.init).eval()
    tokenizer = load_tokenizer(cfg.data)
    image_size, max_len = sizes_of(cfg.data, model.config)
    shapes = ShapesDataset(cfg.data.root)
    metrics = evaluate_all(model, tokenizer, cfg.data, shapes, image_size, max_len,
                           possible_evaluations(shapes, TASKS[task][1]))
    print_metrics(metrics)
    return 0


def commands(task: str) -> dict:
    """The CLI verbs of ``task`` ("ground", "refexp", "detect")."""
    if task not in TASKS:
        raise ValueError(f"unknown fine-grained task {task!r}; known: {sorted(TASKS)}")
    return {
        "finetune": lambda argv: finetune(task, argv),
        "evaluate": lambda argv: evaluate(task, argv),
        "predict": lambda argv: predict_main(task, argv),
    }

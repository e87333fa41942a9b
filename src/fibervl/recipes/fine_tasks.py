"""``finetune`` / ``evaluate`` / ``predict`` for the three fine-grained tasks (``ground``,
``refexp``, ``detect``); :mod:`.grounding`, :mod:`.refexp` and :mod:`.detection` expose them.

    fibervl finetune ground  --config configs/fiber-tiny_fine_shapes.yaml model.init=RUN/model train.run_dir=...
    fibervl evaluate ground  --model RUN/model data.root=data/shapes data.eval_split=test
    fibervl finetune refexp  --init RUN/model --train-data mdetr:mdetr_annotations/final_refcoco_train.json:coco/train2014 \
                             --eval-data mdetr:mdetr_annotations/final_refcoco_val.json:coco/train2014
    fibervl evaluate detect  --model RUN/model --eval-data coco:coco/annotations/instances_val2017.json:coco/val2017 \
                             [--results detections.json]
    fibervl predict  ground  --model RUN/model (--image x.jpg | --images DIR) --text "a red star" [--phrases "red star"]
    fibervl predict  refexp  --model RUN/model (--image x.jpg | --images DIR) --text "the small red star"
    fibervl predict  detect  --model RUN/model (--image x.jpg | --images DIR) --classes "star,heart,circle"

``finetune`` trains the task's data alone (the fine pre-training recipe with one kind of data
switched on; ``--train-data`` / ``--eval-data`` name the sources, :mod:`fibervl.data.sources`)
starting from ``model.init`` (``--init``; usually a ``pretrain fine`` model, or a preset alone);
``evaluate`` loads ``--model DIR`` (``model.init=`` is the same) and prints the task's metrics
on ``data.eval_split`` (``--split``) of the evaluation source (detection on a shapes set: seen
classes, and zero-shot AP on the held-out names of ``data.zero_shot_split``, when the data set
holds some out of training; on a detection file: AP over all its classes). ``predict`` is
:mod:`fibervl.predict.cli`: JSON with boxes in the pixels of the image as shown (EXIF
orientation applied) and a PNG with labelled boxes per image (``--out``, default
``runs/predict-<task>/<image stem>_<task>.png`` under the current directory).

``evaluate`` prints its metrics as ``key=value`` and then, last, as one JSON object;
``evaluate detect --results FILE`` also writes the detections of the evaluation source's classes
as a COCO / LVIS results file (``image_id``, ``category_id``, ``bbox`` xywh in the original
image's pixels, ``score``) for pycocotools or the LVIS evaluator.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from .common import parse_run_cli
from ..experiment import load_tokenizer, resolve_model_dir
from ..metrics.detection import write_results
from ..modeling.fiber import FiberModel
from ..predict.cli import main as predict_main
from .fine_pretrain import EvalSets, FineConfig, evaluate_all, print_metrics, run, sizes_of

# task -> (training sources switched on, evaluations)
TASKS = {
    "ground": (("grounding",), ("grounding",)),
    "refexp": (("refexp",), ("refexp",)),
    "detect": (("detection",), ("detection", "zero_shot")),
}
SOURCES = ("grounding", "refexp", "detection")
FINETUNE_FLAGS = {"--init": "model.init", "--run-dir": "train.run_dir", "--max-steps": "train.max_steps",
                  "--tokenizer": "data.tokenizer"}
EVALUATE_FLAGS = {"--model": "model.init", "--split": "data.eval_split", "--num-eval": "data.num_eval",
                  "--tokenizer": "data.tokenizer", "--results": "results"}


def _task_config(task: str, argv: list[str], flags: dict[str, str] = FINETUNE_FLAGS) -> FineConfig:
    cfg = parse_run_cli(FineConfig, argv, flags)
    if cfg.model.init and cfg.model.preset == FineConfig().model.preset:
        # fine-tuning continues the init model's own architecture unless a preset is named
        cfg.model.preset = str(resolve_model_dir(cfg.model.init))
    train_sources, _ = TASKS[task]
    cfg.data = dataclasses.replace(cfg.data, **{s: s in train_sources for s in SOURCES})
    if cfg.train.run_dir == FineConfig().train.run_dir:  # the pre-training default names its own command
        cfg.train.run_dir = f"runs/finetune-{task}"
    return cfg


def finetune(task: str, argv: list[str]) -> int:
    cfg = _task_config(task, argv, FINETUNE_FLAGS)
    print_metrics(run(cfg, eval_which=TASKS[task][1])["eval"])
    return 0


def evaluate(task: str, argv: list[str]) -> int:
    cfg = _task_config(task, argv, EVALUATE_FLAGS)
    if not cfg.model.init:
        raise SystemExit("evaluate needs --model DIR (a saved fine-grained model or its run directory)")
    model = FiberModel.from_pretrained(resolve_model_dir(cfg.model.init)).eval()
    tokenizer = load_tokenizer(cfg.data, cfg.model.init)
    if cfg.results and task != "detect":
        raise SystemExit("--results writes detection results: it belongs to evaluate detect")
    image_size, max_len = sizes_of(cfg.data, model.config)
    results = [] if cfg.results else None
    metrics = evaluate_all(model, tokenizer, cfg.data, EvalSets(cfg.data, TASKS[task][1]), image_size, max_len, results)
    if cfg.results:
        print(f"{len(results)} detections written to {write_results(results, cfg.results)}", file=sys.stderr)
    print_metrics(metrics)
    print(json.dumps(metrics))
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

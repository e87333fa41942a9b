"""``finetune`` / ``evaluate`` / ``predict`` for the three fine-grained tasks (``ground``,
``refexp``, ``detect``): three recipes (:data:`RECIPES`) on the fine-grained pre-training recipe.

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
classes, and zero-shot AP over the held-out classes of ``data.zero_shot_split`` with every class
named in the prompts, when the data set holds some out of training; on a detection file: AP over
all its classes). ``predict`` is
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
import sys
from functools import partial

from ..errors import ConfigError
from ..experiment import load_tokenizer
from ..modeling.factory import resolve_model_dir
from ..metrics.detection import write_results
from ..modeling.fiber import FiberModel
from ..engine import distributed as D
from .common import evaluation_processes, required_model
from .fine_pretrain import EvalSets, FineConfig, evaluate_all, run
from .registry import Recipe

# task -> (training sources switched on, evaluations)
TASKS = {
    "ground": (("grounding",), ("grounding",)),
    "refexp": (("refexp",), ("refexp",)),
    "detect": (("detection",), ("detection", "zero_shot")),
}
SOURCES = ("grounding", "refexp", "detection")


def task_config(task: str, cfg: FineConfig, verb: str = "finetune") -> FineConfig:
    """The fine-grained recipe's config ``cfg`` made the config of ``task``: its own kind of
    data switched on alone, its own run directory, and the init model's own architecture
    unless a preset is named."""
    if cfg.model.init and cfg.model.preset == FineConfig().model.preset:
        # fine-tuning continues the init model's own architecture unless a preset is named
        cfg.model.preset = str(resolve_model_dir(cfg.model.init))
    train_sources, _ = TASKS[task]
    cfg.data = dataclasses.replace(cfg.data, **{s: s in train_sources for s in SOURCES})
    if cfg.train.run_dir == FineConfig().train.run_dir:  # the pre-training default names its own command
        cfg.train.run_dir = f"runs/finetune-{task}"
    return cfg


def finetune(task: str, cfg: FineConfig) -> dict:
    """Fine-tune on ``task``'s data alone and evaluate ``task``; the trainer's summary."""
    return run(cfg, eval_which=TASKS[task][1])


def evaluate(task: str, cfg: FineConfig) -> dict:
    """The metrics of ``task`` of the saved model ``cfg.model.init`` (``--results FILE``:
    also the detections, as a COCO / LVIS results file)."""
    required_model(cfg, task)
    if cfg.results and task != "detect":
        raise ConfigError("--results writes detection results: it belongs to evaluate detect")
    with evaluation_processes(cfg.train.device) as device:  # under torchrun: the images split across processes
        model = FiberModel.from_pretrained(resolve_model_dir(cfg.model.init)).eval().to(device)
        tokenizer = load_tokenizer(cfg.data, cfg.model.init)
        image_size, max_len = cfg.data.input_sizes(model.config)
        results = [] if cfg.results else None
        metrics = evaluate_all(model, tokenizer, cfg.data, EvalSets(cfg.data, TASKS[task][1]), image_size, max_len,
                               results)
        if cfg.results and D.get_rank() == 0:  # every rank has every detection: one writes them
            print(f"{len(results)} detections written to {write_results(results, cfg.results)}", file=sys.stderr)
    return metrics


SUMMARIES = {
    "ground": "phrase grounding (Flickr30k Entities protocol, R@1/5/10)",
    "refexp": "referring expression comprehension (top-1 box, accuracy at IoU >= 0.5)",
    "detect": "object detection as grounding over class-name prompts (COCO / LVIS AP; zero-shot AP over held-out classes)",
}
RECIPES = tuple(
    Recipe(task, SUMMARIES[task], FineConfig, partial(finetune, task), evaluate=partial(evaluate, task), predict=True,
           prepare=partial(task_config, task), evaluate_aliases={"--results": "results"})
    for task in TASKS
)

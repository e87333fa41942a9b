"""``fibervl finetune|evaluate|predict vqa``: visual question answering (VQAv2 format).

    fibervl finetune vqa --config configs/fiber-tiny_vqa_shapes.yaml --init RUN_OR_MODEL
    fibervl finetune vqa --init RUN_OR_MODEL --data-root VQAV2_DIR data.source=mscoco \\
        data.train_split=train2014 data.eval_split=val2014 --image-root COCO_DIR \\
        --image-template "{split}/COCO_{split}_{image_id:012d}.jpg"
    fibervl evaluate vqa --model RUN/model --data-root DIR [--split test] [--results out.json]
    fibervl evaluate vqa --model RUN --eval-data vqav2,split=test-dev2015:vqav2:coco --results answers.json
    fibervl predict vqa --model RUN/model (--image x.jpg | --images DIR) --question "what color is the circle?"

    fibervl finetune vqa --init RUN --train-data vqav2,split=train2014:vqav2:coco \
        --train-data vqav2,split=val2014:vqav2:coco --eval-data vqav2,split=val2014:vqav2:coco

Data: VQA sources (:mod:`fibervl.data.sources`; ``vqav2:DIR:IMAGES``, several training ones
mixed by weight), or the older keys: with ``data.source`` empty, ``data.root`` is a shapes set;
otherwise any directory in the VQAv2 layout (``v2_OpenEnded_{source}_{split}_questions.json`` +
``v2_{source}_{split}_annotations.json``) with images at ``image_root / image_template``
(VQAv2's template by default; ``split`` is the data subtype, e.g. ``train2014``). The answer
vocabulary is the ``vqa.max_answers`` most frequent
(normalised) training answers given at least ``vqa.min_count`` times; the model's VQA head is
rebuilt to its size and the export holds it as ``model/answers.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data import AnswerVocabulary, VqaCollator
from ..data.readers.vqa import VQAV2_IMAGE_TEMPLATE
from ..data.sources import DataSource, open_eval, training_reader
from ..data.transforms import train_transforms
from ..engine import distributed as D
from ..engine.precision import uses_bf16
from ..engine.trainer import Trainer, TrainConfig
from ..experiment import DataSpec, ModelSpec, load_tokenizer
from ..modeling.factory import resolve_model_dir
from ..metrics.vqa import write_vqa_results
from ..tasks.vqa import VqaTask, evaluate_vqa, predict_answers, vocabulary_coverage
from .common import (evaluation_processes, export_task_model, fused_training_data, load_model_dir, required_model,
                     warn_truncated, final_metrics, recipe_train)
from .registry import Recipe

ANSWERS_FILE = "answers.json"
# where the images of a VQAv2-layout directory are (data.source set)
IMAGE_ALIASES = {"--image-root": "data.image_root", "--image-template": "data.image_template"}


@dataclass
class VqaData(DataSpec):
    """``source``: "" for a shapes set at ``root``, else the name in the VQAv2 file names
    ("mscoco"); ``image_root`` (default ``root``) and ``image_template`` locate the images."""

    source: str = ""
    image_root: str = ""
    image_template: str = VQAV2_IMAGE_TEMPLATE
    train_split: str = "train"
    eval_split: str = "val"
    # train on cached image prefixes (needs model.freeze_prefix; no image augmentation): tasks/prefix_cache.py
    cache_image_prefix: bool = False

    def legacy_source(self) -> DataSource:
        if not self.source:
            return DataSource("shapes", self.root)
        return DataSource("vqav2", self.root, self.image_root or self.root, image_template=self.image_template)


@dataclass
class VqaSettings:
    max_answers: int = 3129
    min_count: int = 1


@dataclass
class VqaConfig:
    """VQA fine-tuning (a classifier over the most frequent training answers) and its VQAv2 evaluation."""

    model: ModelSpec = field(default_factory=ModelSpec)
    data: VqaData = field(default_factory=VqaData)
    vqa: VqaSettings = field(default_factory=VqaSettings)
    train: TrainConfig = field(default_factory=lambda: recipe_train("finetune-vqa", max_steps=100))
    results: str = ""  # evaluate: also write the predictions in the VQAv2 server format here


def vqa_reader(data: VqaData, split: str, seed: int = 0):
    """The questions of ``split``: at ``data.train_split`` the training sources mixed by weight,
    at any other split the evaluation source."""
    if split == data.train_split:
        return training_reader(data.train_sources(), "vqa", split, data.skip_bad_records, seed, "finetune vqa")
    return open_eval(data.eval_source(), "vqa", split, data.skip_bad_records, "evaluate vqa")


def _eval_set(cfg: VqaConfig) -> tuple[str, list]:
    """(the split the evaluation source was read at, its first ``data.num_eval`` questions)."""
    reader = vqa_reader(cfg.data, cfg.data.eval_split)
    split = getattr(reader, "split", "") or cfg.data.eval_source().split or cfg.data.eval_split
    samples = list(reader)
    return split, samples[:cfg.data.num_eval] if cfg.data.num_eval else samples


def server_results_name(split: str) -> str:
    """The file name the VQAv2 evaluation server asks for (``vqa_[task]_[data type]_[subtype]_[method]_results.json``)."""
    return f"vqa_OpenEnded_mscoco_{split}_fibervl_results.json"


def run(cfg: VqaConfig) -> dict:
    """Build the vocabulary, fine-tune, evaluate on ``data.eval_split``, export a self-contained model."""
    tokenizer = load_tokenizer(cfg.data, cfg.model.init)
    train_reader = vqa_reader(cfg.data, cfg.data.train_split, cfg.train.seed)
    vocab = AnswerVocabulary.build(train_reader, min_count=cfg.vqa.min_count, max_size=cfg.vqa.max_answers)
    coverage = vocabulary_coverage(train_reader, vocab)
    print(f"answer vocabulary: {len(vocab)} answers; train coverage: {coverage}")
    # A fresh VQA head unless the init is a VQA model with this very answer list (continued training).
    keep = cfg.model.init and (resolve_model_dir(cfg.model.init) / ANSWERS_FILE).is_file() and \
        load_vocabulary(resolve_model_dir(cfg.model.init)).answers == vocab.answers
    model, loaded = cfg.model.build(tokenizer, new_heads=() if keep else ("vqa",),
                                    config_changes={"vqa_num_answers": len(vocab)}, with_report=True)
    if cfg.model.init:
        print(f"new weights (not loaded from {cfg.model.init}): {loaded.new}")
    image_size, max_len = cfg.data.input_sizes(model.config)
    warn_truncated(tokenizer, (s.text for s in train_reader), max_len, "training questions")
    eval_split, eval_samples = _eval_set(cfg)
    bf16 = uses_bf16(cfg.train.precision, cfg.train.device)

    # An evaluation split without annotations (test-dev2015 after training on train+val) is
    # not scored: its answers are written to the run directory for the evaluation server.
    scored = any(s.answers for s in eval_samples)

    def evaluate(m) -> dict[str, float]:
        return evaluate_vqa(m, tokenizer, vocab, eval_samples, image_size, max_len, bf16=bf16)[0]

    train, cache = fused_training_data(train_reader, train_transforms(image_size), model,
                                       cfg.data.cache_image_prefix, image_size, bf16, cfg.train.device)
    summary = Trainer(cfg.train, model, VqaTask(), train, collate_fn=VqaCollator(tokenizer, max_len, vocab, cache),
                      evaluate=evaluate if scored else None, config_snapshot=cfg).fit()
    if scored:
        metrics = final_metrics(summary, evaluate, model)
    else:
        answers = predict_answers(model, tokenizer, vocab, eval_samples, image_size, max_len, bf16=bf16)
        path = Path(cfg.train.run_dir) / server_results_name(eval_split)
        if D.get_rank() == 0:
            write_vqa_results(answers, path)
            print(f"{eval_split} has no annotations: not scored; wrote {len(answers)} answers to {path}")
        metrics = {"questions": len(answers), "scored": False, "results": str(path)}
    export_task_model(model, tokenizer, cfg.train.run_dir,
                      {"eval_split": cfg.data.eval_split, **metrics, "train_coverage": coverage},
                      files={ANSWERS_FILE: vocab.answers}, data=cfg.data)
    summary["eval"] = metrics
    return summary


def load_vocabulary(model_dir: Path) -> AnswerVocabulary:
    path = model_dir / ANSWERS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a VQA model directory holds its answer list (fibervl finetune vqa writes it)")
    return AnswerVocabulary.load(path)


def evaluate_saved(cfg: VqaConfig) -> dict:
    """``evaluate vqa``: the metrics of the saved model ``--model DIR`` on the evaluation split;
    with ``--results FILE`` also its answers in the server's format. A split without
    annotations (test2015, test-dev2015) is not scored: its answers are written (to
    ``--results``, else :func:`server_results_name` in the current directory) for the server.
    Under torchrun the questions are split across the processes and gathered; rank 0 writes."""
    required_model(cfg, "vqa")
    with evaluation_processes(cfg.train.device) as device:
        return _evaluate_on(cfg, device)


def _evaluate_on(cfg: VqaConfig, device) -> dict:
    model, tokenizer, directory = load_model_dir(cfg.model.init, device=str(device))
    vocab = load_vocabulary(directory)
    image_size, max_len = cfg.data.input_sizes(model.config)
    split, samples = _eval_set(cfg)
    bf16 = uses_bf16(cfg.train.precision, cfg.train.device)
    main = D.get_rank() == 0
    if not any(s.answers for s in samples):
        predictions = predict_answers(model, tokenizer, vocab, samples, image_size, max_len, bf16=bf16)
        path = Path(cfg.results or server_results_name(split))
        if main:
            write_vqa_results(predictions, path)
            print(f"{split} has no annotations: not scored; wrote {len(predictions)} answers to {path} "
                  "for the VQAv2 evaluation server")
        return {"split": split, "questions": len(predictions), "scored": False, "results": str(path)}
    metrics, predictions = evaluate_vqa(model, tokenizer, vocab, samples, image_size, max_len, bf16=bf16)
    if main and cfg.results:
        write_vqa_results(predictions, cfg.results)
    return {"split": split, **metrics, **({"results": cfg.results} if cfg.results else {})}


def predict(model_dir: str | Path, image: str | Path, question: str, k: int = 5) -> dict:
    """``{"image", "question", "answer", "top": [{"answer", "score"}, ...]}`` for one image:
    :class:`~fibervl.predict.VqaPredictor` (use it directly for many images)."""
    from ..predict import VqaPredictor, load

    model, processor = load(model_dir, task="vqa")
    return VqaPredictor(model, processor, top=k).predict([image], question)[0]


RECIPE = Recipe("vqa", "visual question answering (VQAv2 accuracy)", VqaConfig, run, evaluate=evaluate_saved,
                predict=True, train_aliases=IMAGE_ALIASES, evaluate_aliases={**IMAGE_ALIASES, "--results": "results"})

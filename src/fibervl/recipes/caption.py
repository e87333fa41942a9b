"""``fibervl finetune|evaluate|predict caption``: image captioning in caption mode.

    fibervl finetune caption --config configs/fiber-tiny_caption_shapes.yaml model.init=runs/coarse/model
    fibervl evaluate caption --model RUN/model data.root=data/shapes --split test [--results captions.json] [--baseline]
    fibervl predict caption --model RUN/model (--image x.png | --images DIR) [--beam 3] [--max-length 20]

Fine-tuning is maximum likelihood with teacher forcing (``tasks.caption``), or, continuing from
an MLE model, CIDEr optimisation (``caption.objective=scst``: rewards from CIDEr-D against the
training references of each image) or GOLD (``caption.objective=gold``;
``tasks.caption_objectives``); with
``model.freeze_prefix=true data.cache_image_prefix=true`` it trains on each image's frozen prefix
computed once (``tasks.prefix_cache``; exact, since caption mode never fuses the image side with
the text; about 4x cheaper steps for ``fiber-tiny``, no colour jitter). Evaluation decodes
with beam search and a key/value cache and scores BLEU-4, METEOR, ROUGE-L and CIDEr with
pycocoevalcap (``pip install fibervl[eval]``, Java on PATH); SPICE is reported as unavailable
when its models are not installed. The run directory ends with ``model/`` (weights, config and
``tokenizer/``: self-contained for ``evaluate``/``predict``), ``metrics.json`` and
``predictions_<split>.json`` (COCO results format).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..data import PairCollator, stable_id
from ..data.transforms import train_transforms
from ..engine import distributed as D
from ..engine.precision import uses_bf16
from ..engine.trainer import Trainer, TrainConfig
from ..experiment import ModelSpec, load_tokenizer, split_name
from ..modeling.fiber import FiberModel
from ..metrics.baselines import most_frequent_caption_baseline
from ..tasks.caption import CaptionSettings, CaptionTask, evaluate_captioning
from ..errors import ConfigError
from .common import (
    evaluation_processes, export_model, fused_training_data, model_tokenizer, recipe_train, required_model,
)
from .image_text import FinetuneCaptionData, caption_reader
from .registry import Recipe


@dataclass
class CaptionConfig:
    """Captioning in caption mode: fine-tuning (MLE, SCST or GOLD) and its evaluation (BLEU-4,
    METEOR, ROUGE-L, CIDEr, SPICE). ``results`` (evaluate): also write the captions in the COCO
    results format there; ``baseline`` (evaluate, ``--baseline``): score the most frequent
    training caption given for every image instead of a model."""

    model: ModelSpec = field(default_factory=ModelSpec)
    data: FinetuneCaptionData = field(default_factory=FinetuneCaptionData)
    caption: CaptionSettings = field(default_factory=CaptionSettings)
    train: TrainConfig = field(default_factory=lambda: recipe_train("finetune-caption", max_steps=500))
    results: str = ""
    baseline: bool = field(default=False, metadata={"switch": "--baseline"})


def training_references(reader) -> dict[int, list[str]]:
    """{image id as the batches carry it (``stable_id``): all its captions}: SCST's references."""
    return {stable_id(img["image_id"]): list(img["captions"]) for img in reader.images}


def _check_caption_head(model: FiberModel, where: str) -> None:
    if "caption" not in model.config.heads:
        raise ValueError(f"the model {where} has no caption head (config.heads {list(model.config.heads)}); "
                         "build it with model.heads including 'mlm' and 'caption'")


def run(cfg: CaptionConfig) -> dict:
    """Fine-tune, evaluate on ``data.eval_split`` and export. Returns the trainer summary with
    ``eval`` (the final metrics)."""
    if cfg.baseline:
        raise ConfigError("--baseline scores a caption baseline: it belongs to evaluate caption")
    tokenizer = load_tokenizer(cfg.data, cfg.model.init)
    model = cfg.model.build(tokenizer)
    _check_caption_head(model, cfg.model.init or cfg.model.preset)
    mcfg = model.config
    image_size, max_len = cfg.data.input_sizes(mcfg)
    bf16 = uses_bf16(cfg.train.precision, cfg.train.device)
    # Caption mode never fuses the image side with the text, so with the prefixes frozen the
    # image tokens up to the first fused block can be computed once (data.cache_image_prefix).
    train_reader = caption_reader(cfg.data, cfg.data.train_split)
    train, cache = fused_training_data(train_reader, train_transforms(image_size), model,
                                       cfg.data.cache_image_prefix, image_size, bf16, cfg.train.device)
    eval_reader = caption_reader(cfg.data, cfg.data.eval_split)
    decode = cfg.caption.decode_config()
    last: dict = {}  # the latest evaluation in full (step, metrics, predictions)

    def evaluate(m) -> dict[str, float]:
        metrics, preds = evaluate_captioning(m, tokenizer, eval_reader, image_size, decode, limit=cfg.data.num_eval,
                                             batch_size=cfg.caption.eval_batch_size, bf16=bf16,
                                             spice=cfg.caption.spice)
        last.update(step=trainer.step, metrics=metrics, predictions=preds)
        # The trainer logs numbers only; the SPICE status goes to metrics.json at the end.
        return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}

    task = CaptionTask(cfg.caption, tokenizer, training_references(train_reader))
    trainer = Trainer(cfg.train, model, task, train,
                      collate_fn=PairCollator(tokenizer, max_len, cache), evaluate=evaluate, config_snapshot=cfg)
    summary = trainer.fit()
    # The trainer evaluates after its last step; only a run stopped by a signal needs it again.
    if last.get("step") != trainer.step:
        evaluate(model)
    metrics, preds = last["metrics"], last["predictions"]
    export_model(model, cfg.train.run_dir, {"eval_split": cfg.data.eval_split, "beam_size": decode.beam_size,
                                            **metrics}, tokenizer=tokenizer, data=cfg.data)
    if D.get_rank() == 0:
        write_caption_results(preds, Path(cfg.train.run_dir) / f"predictions_{cfg.data.eval_split}.json")
    summary["eval"] = metrics
    return summary


def write_caption_results(predictions: list[dict], path: str | Path) -> Path:
    """COCO caption results (``[{"image_id", "caption"}]``), what pycocoevalcap's ``loadRes`` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(predictions, indent=1) + "\n", encoding="utf-8")
    return path


def evaluate_saved(cfg: CaptionConfig) -> dict:
    """``evaluate caption``: the caption scores of the saved model ``--model DIR`` on the
    evaluation split (the config's ``data`` and ``caption`` sections apply; ``train`` is
    ignored), or with ``--baseline`` those of the most frequent training caption."""
    from ..modeling.factory import resolve_model_dir

    if not cfg.baseline:
        required_model(cfg, "caption")
    eval_reader = caption_reader(cfg.data, cfg.data.eval_split)
    split = split_name(cfg.data.eval_source(), cfg.data.eval_split)
    if cfg.baseline:
        metrics = most_frequent_caption_baseline(caption_reader(cfg.data, cfg.data.train_split), eval_reader,
                                                 limit=cfg.data.num_eval, spice=cfg.caption.spice)
        return {"split": split, "baseline": "most frequent training caption", **metrics}
    model_dir = resolve_model_dir(cfg.model.init)
    with evaluation_processes(cfg.train.device) as device:  # under torchrun: the images split across processes
        model = FiberModel.from_pretrained(model_dir).eval().to(device)
        _check_caption_head(model, model_dir)
        fallback = cfg.data.tokenizer or (Path(cfg.data.root) / "tokenizer")
        tokenizer = model_tokenizer(model_dir, fallback)
        image_size, _ = cfg.data.input_sizes(model.config)
        metrics, preds = evaluate_captioning(model, tokenizer, eval_reader, image_size, cfg.caption.decode_config(),
                                             limit=cfg.data.num_eval, batch_size=cfg.caption.eval_batch_size,
                                             spice=cfg.caption.spice)
        if cfg.results and D.get_rank() == 0:  # every rank has every caption: one writes them
            write_caption_results(preds, cfg.results)
    return {"split": split, "beam_size": cfg.caption.beam_size, **metrics,
            **({"results": cfg.results} if cfg.results else {})}


RECIPE = Recipe("caption", "image captioning (BLEU-4, METEOR, ROUGE-L, CIDEr; COCO caption results)", CaptionConfig,
                run, evaluate=evaluate_saved, predict=True,
                # --predictions: the older name of --results
                evaluate_aliases={"--results": "results", "--predictions": "results"})

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

from ..data.transforms import train_transforms
from ..engine import distributed as D
from ..engine.precision import uses_bf16
from ..engine.trainer import Trainer, TrainConfig
from ..experiment import ModelSpec, build_model, load_tokenizer
from ..modeling.fiber import FiberModel
from ..tasks.caption import (
    CaptionSettings, CaptionTask, evaluate_captioning, most_frequent_caption_baseline,
)
from ..predict.cli import main as predict_main
from .coarse_pretrain import FinetuneCaptionData, caption_reader
from .common import (
    PairCollator, export_model, fused_training_data, model_tokenizer, parse_run_cli, recipe_train,
    stable_id,
)


@dataclass
class CaptionConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: FinetuneCaptionData = field(default_factory=FinetuneCaptionData)
    caption: CaptionSettings = field(default_factory=CaptionSettings)
    train: TrainConfig = field(default_factory=lambda: recipe_train("finetune-caption", max_steps=500))


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
    tokenizer = load_tokenizer(cfg.data, cfg.model.init)
    model = build_model(cfg.model, tokenizer)
    _check_caption_head(model, cfg.model.init or cfg.model.preset)
    mcfg = model.config
    image_size = cfg.data.image_size or mcfg.vision.image_size
    max_len = cfg.data.max_text_len or mcfg.text.max_text_len
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


def _format(metrics: dict) -> str:
    keys = ("bleu_4", "meteor", "rouge_l", "cider", "spice_status")
    return "  ".join(f"{k}={metrics[k]:.2f}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}"
                     for k in keys if k in metrics)


def _finetune_command(argv: list[str]) -> int:
    cfg = parse_run_cli(CaptionConfig, argv)
    summary = run(cfg)
    print(_format(summary["eval"]))
    return 0


def _pop_option(argv: list[str], name: str, takes_value: bool = True):
    """Remove ``--name VALUE`` / ``--name=VALUE`` (or a bare ``--name`` flag) from argv."""
    for i, a in enumerate(argv):
        if a == name:
            if not takes_value:
                del argv[i]
                return True
            if i + 1 >= len(argv):
                raise SystemExit(f"{name} needs a value")
            value = argv[i + 1]
            del argv[i:i + 2]
            return value
        if takes_value and a.startswith(name + "="):
            del argv[i]
            return a.split("=", 1)[1]
    return False if not takes_value else None


EVALUATE_FLAGS = {"--split": "data.eval_split", "--num-eval": "data.num_eval"}


def write_caption_results(predictions: list[dict], path: str | Path) -> Path:
    """COCO caption results (``[{"image_id", "caption"}]``), what pycocoevalcap's ``loadRes`` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(predictions, indent=1) + "\n", encoding="utf-8")
    return path


def _print(metrics: dict) -> None:
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in metrics.items()}))


def _evaluate_command(argv: list[str]) -> int:
    """``--model DIR [--results FILE] [--split S] [--num-eval N] [--baseline] [--config FILE]
    key=value ...`` (the config's ``data`` and ``caption`` sections apply; ``train`` is ignored).
    Prints the metrics as one JSON object on the last line; ``--results`` (or its older name
    ``--predictions``) also writes the captions in the COCO results format."""
    from ..engine.config import parse_cli
    from ..experiment import resolve_model_dir

    argv = list(argv)
    model_dir = _pop_option(argv, "--model")
    results = _pop_option(argv, "--results") or _pop_option(argv, "--predictions")
    baseline = _pop_option(argv, "--baseline", takes_value=False)
    cfg, _ = parse_cli(CaptionConfig, argv + ["train.max_steps=1"], EVALUATE_FLAGS)
    eval_reader = caption_reader(cfg.data, cfg.data.eval_split)
    split = cfg.data.eval_source().split or cfg.data.eval_split
    if baseline:
        metrics = most_frequent_caption_baseline(caption_reader(cfg.data, cfg.data.train_split), eval_reader,
                                                 limit=cfg.data.num_eval, spice=cfg.caption.spice)
        _print({"split": split, "baseline": "most frequent training caption", **metrics})
        return 0
    if not model_dir:
        raise SystemExit("evaluate caption needs --model DIR (or --baseline)")
    model_dir = resolve_model_dir(model_dir)
    model = FiberModel.from_pretrained(model_dir).eval()
    _check_caption_head(model, model_dir)
    fallback = cfg.data.tokenizer or (Path(cfg.data.root) / "tokenizer")
    tokenizer = model_tokenizer(model_dir, fallback)
    image_size = cfg.data.image_size or model.config.vision.image_size
    metrics, preds = evaluate_captioning(model, tokenizer, eval_reader, image_size, cfg.caption.decode_config(),
                                         limit=cfg.data.num_eval, batch_size=cfg.caption.eval_batch_size,
                                         spice=cfg.caption.spice)
    if results:
        write_caption_results(preds, results)
    _print({"split": split, "beam_size": cfg.caption.beam_size, **metrics, **({"results": results} if results else {})})
    return 0


COMMANDS = {"finetune": _finetune_command, "evaluate": _evaluate_command,
            "predict": lambda argv: predict_main("caption", argv)}

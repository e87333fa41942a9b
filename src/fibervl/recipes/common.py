"""Pieces every recipe shares: run directories, the final model export (with the tokenizer, so
that ``run_dir/model`` is self-contained). The batches are :mod:`fibervl.data.collate`'s."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from ..data import ProcessedDataset, Processor, Tokenizer
from ..engine import distributed as D
from ..tasks.prefix_cache import cached_training_inputs


def export_model(model, run_dir: str | Path, metrics: dict | None = None, tokenizer: Tokenizer | None = None,
                 data=None, files: dict[str, object] | None = None, card_fields: dict | None = None) -> Path:
    """Write ``run_dir/model`` on rank 0: model.safetensors and config.json with the model card
    (:mod:`fibervl.predict.card`: preset, tasks, ``data`` (the recipe's data settings),
    ``metrics``, and any other card field in ``card_fields``), ``tokenizer/`` when a tokenizer is
    given (see :func:`model_tokenizer`),
    ``files`` (name -> JSON-serialisable object, e.g. ``{"answers.json": [...]}``) beside
    config.json; and ``run_dir/metrics.json``."""
    from ..modeling.pretrained import save_pretrained
    from ..predict.card import make_card

    out = Path(run_dir) / "model"
    if D.get_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        if tokenizer is not None:
            tokenizer.save(out / "tokenizer")
        for name, obj in (files or {}).items():
            (out / name).write_text(json.dumps(obj, ensure_ascii=False) + "\n", encoding="utf-8")
        # the card names the tokenizer and files written above
        save_pretrained(model, out, card=make_card(model.config, out, data=data, metrics=metrics,
                                                      **(card_fields or {})).to_dict())
        if metrics is not None:
            (Path(run_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    D.barrier()
    return out


def model_tokenizer(model_dir: str | Path, fallback: str | Path | None = None) -> Tokenizer:
    """The tokenizer exported with a model (``MODEL_DIR/tokenizer``), else ``fallback``."""
    own = Path(model_dir) / "tokenizer"
    if own.exists():
        return Tokenizer.from_pretrained(own)
    if fallback is None:
        raise FileNotFoundError(f"{model_dir} has no tokenizer/ directory; give the data set's tokenizer "
                                "(data.root=DIR or data.tokenizer=PATH)")
    return Tokenizer.from_pretrained(fallback)


def warn_truncated(tokenizer: Tokenizer, texts, max_length: int, what: str = "texts") -> int:
    """Count the texts longer than ``max_length`` tokens (specials included), which the
    tokenizer will truncate, and warn once with the count. Returns the count."""
    import warnings

    texts = list(texts)
    n = sum(len(tokenizer.encode(t)[0]) > max_length for t in texts)
    if n:
        warnings.warn(f"{n} of {len(texts)} {what} are longer than {max_length} tokens and are truncated", stacklevel=2)
    return n


def export_task_model(model, tokenizer: Tokenizer, run_dir: str | Path, metrics: dict | None = None,
                      files: dict[str, object] | None = None, data=None, card_fields: dict | None = None) -> Path:
    """:func:`export_model` of a task's model: with the tokenizer and ``files`` (e.g. VQA's
    ``answers.json``), so that the model directory is self-contained for ``predict``."""
    return export_model(model, run_dir, metrics, tokenizer, data=data, files=files, card_fields=card_fields)


def load_model_dir(path: str | Path, device: str = "cpu", fallback_tokenizer: Tokenizer | None = None):
    """A self-contained model directory (or a run directory) -> (model in eval mode, tokenizer, dir).
    ``fallback_tokenizer``: used when the directory has no ``tokenizer/`` (e.g. a pre-training export)."""
    from ..modeling.factory import create_model, resolve_model_dir

    directory = resolve_model_dir(path)
    tok_dir = directory / "tokenizer"
    if not tok_dir.is_dir() and fallback_tokenizer is None:
        raise FileNotFoundError(f"{tok_dir} not found: the model directory has no tokenizer (export with a task recipe, "
                                "or copy the data set's tokenizer there)")
    model = create_model(directory, device=device).eval()
    tokenizer = Tokenizer.from_pretrained(tok_dir) if tok_dir.is_dir() else fallback_tokenizer
    return model, tokenizer, directory


def recipe_train(command: str, **settings):
    """The engine settings a training command starts from: ``precision: auto`` (bf16 where it is
    fast, measured once) and a run directory named after the command (``runs/finetune-vqa``),
    so that no two commands, nor the main job's ``runs/default``, share one by default."""
    from ..engine.trainer import TrainConfig

    return TrainConfig(run_dir=f"runs/{command}", precision="auto", **settings)


def required_model(cfg, task: str) -> str:
    """The saved model an ``evaluate`` command evaluates: ``--model DIR`` (``model.init``)."""
    if not cfg.model.init:
        from ..errors import ConfigError

        raise ConfigError(f"evaluate {task} needs --model DIR (a trained {task} model or its run directory)")
    return cfg.model.init


def final_metrics(summary: dict, evaluate, model) -> dict[str, float]:
    """The metrics of the trained model: the trainer's own evaluation after its last step
    (``summary["eval"]``, keys ``eval/...``) when there is one, else ``evaluate(model)`` now
    (a run stopped by a signal, or a trainer given no evaluation). Saves a second full pass."""
    done = summary.get("eval") or {}
    if done and not summary.get("stopped_by_signal"):
        return {k.removeprefix("eval/"): v for k, v in done.items()}
    return evaluate(model)


def fused_training_data(reader, transforms, model, cache_image_prefix: bool, image_size: int, bf16: bool,
                        device: str):
    """(training dataset, prefix cache or None) of a fine-tuning task on the fused model
    (retrieval, VQA, NLVR2; captioning, whose image side runs unfused).

    With ``cache_image_prefix`` (which needs the model's prefix frozen: ``model.freeze_prefix``)
    every training image's frozen prefix is computed once (:mod:`fibervl.tasks.prefix_cache`) and
    the dataset yields text-only samples; ``transforms`` are then not applied (training sees
    images as evaluation). A reader that skips bad records has images that do not decode
    skipped too (the collator drops them)."""
    if not cache_image_prefix:
        return ProcessedDataset(reader, Processor(transforms, skip_bad=getattr(reader, "skip_bad", False))), None
    samples = list(reader)
    cache, processor = cached_training_inputs(model.to(D.resolve_device(device)), samples, image_size, bf16)
    return ProcessedDataset(samples, processor), cache


@contextmanager
def evaluation_processes(device: str = "auto"):
    """This process's device for an ``evaluate`` command; under torchrun inside a process group
    (started here and torn down on leaving, unless one was already there), so that the task's
    evaluation splits its items across the processes (:func:`fibervl.engine.distributed.rank_share`)."""
    import torch.distributed as dist

    started = D.launched_by_torchrun() and not dist.is_initialized()
    dev = D.init_distributed(device)
    try:
        yield dev
    finally:
        if started:
            D.destroy_distributed()

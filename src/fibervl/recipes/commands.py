"""The command-line commands of every recipe, generated from its :class:`~.registry.Recipe`.

    fibervl pretrain|finetune NAME [--config FILE] [--resume [PATH]] [OPTION V ...] key=value ...
    fibervl evaluate NAME --model DIR [--config FILE] [OPTION V ...] key=value ...
    fibervl predict NAME --model DIR ...        (the options of fibervl.predict.cli)

A training command parses its config (:func:`parse`), runs the recipe and prints the final
metrics; ``evaluate`` evaluates the saved model ``--model DIR`` on the evaluation source and
prints its metrics. Both print them the same way (:func:`print_metrics`): a readable
``key=value`` line, then, as the last line of stdout, one JSON object that scripts read.
``-h`` lists the recipe's options and every config key with its default (:func:`help_text`).
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from typing import Any, Mapping, TextIO

from ..engine.config import cli_help, parse_cli
from .registry import Recipe

TRAINING_VERBS = ("pretrain", "finetune")


def usage(recipe: Recipe, verb: str) -> str:
    if verb == "evaluate":
        return f"fibervl evaluate {recipe.name} --model DIR [--config FILE] [OPTION V ...] key=value ..."
    return f"fibervl {verb} {recipe.name} [--config FILE] [--resume [PATH]] [OPTION V ...] key=value ..."


def _own_doc(cls: type) -> str:
    """The docstring written for ``cls`` (not the signature dataclasses make up for a class without one)."""
    doc = inspect.getdoc(cls) or ""
    return "" if doc.startswith(f"{cls.__name__}(") else doc


def help_text(recipe: Recipe, verb: str) -> str:
    """The ``-h`` text of ``fibervl VERB NAME``: what it does, the config's own description,
    the options (friendly aliases, switches, source options) and every config key with its
    default."""
    what = "evaluate a saved model: " if verb == "evaluate" else ""
    parts = [f"{what}{recipe.summary}", _own_doc(recipe.config_cls)]
    parts.append(cli_help(recipe.config_cls, usage(recipe, verb), recipe.aliases(verb), resume=verb in TRAINING_VERBS))
    return "\n\n".join(p for p in parts if p)


def parse(recipe: Recipe, verb: str, argv: list[str]) -> Any:
    """The config of ``fibervl VERB NAME ARGV`` (``--resume`` in ``train.resume``, the recipe's
    ``prepare`` applied); nothing runs. ``-h`` prints :func:`help_text` and exits 0."""
    if verb not in recipe.verbs or verb == "predict":
        raise ValueError(f"fibervl {verb} {recipe.name}: no such config-driven command (it has {', '.join(recipe.verbs)})")
    if "-h" in argv or "--help" in argv:
        print(help_text(recipe, verb))
        raise SystemExit(0)
    cfg, flags = parse_cli(recipe.config_cls, argv, recipe.aliases(verb))
    if flags["resume"] and verb in TRAINING_VERBS:
        cfg.train.resume = flags["resume"]
    return recipe.prepare(cfg, verb) if recipe.prepare else cfg


def run_command(recipe: Recipe, verb: str, argv: list[str]) -> int:
    """Run ``fibervl VERB NAME ARGV``; the exit code."""
    if verb == "predict":
        from ..predict.cli import main as predict_main

        return predict_main(recipe.name, argv)
    cfg = parse(recipe, verb, argv)
    metrics = recipe.evaluate(cfg) if verb == "evaluate" else recipe.run(cfg)["eval"]
    print_metrics(metrics)
    return 0


def _plain(value: Any) -> Any:
    """A JSON value for what ``json`` does not know (a numpy or torch scalar, a path)."""
    return value.item() if hasattr(value, "item") else str(value)


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """``key=value`` pairs on one line, numbers to two decimals."""
    return "  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def print_metrics(metrics: Mapping[str, Any], file: TextIO | None = None) -> None:
    """A command's result: :func:`format_metrics`, then the metrics unrounded as one JSON object
    on the last line (what scripts read: ``json.loads(stdout.splitlines()[-1])``). Under
    torchrun only the process of rank 0 prints."""
    if os.environ.get("RANK", "0") != "0":
        return
    out = file or sys.stdout
    print(format_metrics(metrics), file=out)
    print(json.dumps(dict(metrics), default=_plain), file=out, flush=True)

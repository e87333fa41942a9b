"""The model card of a saved model directory: what a program or a person needs to use it.

It lives in the directory's ``config.json`` under ``"card"``, beside the architecture (which the
model classes read and the card never changes). Directories saved before cards existed have
none; :func:`card_of` then works one out from what the directory holds.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS = ("retrieval", "vqa", "nlvr2", "caption", "ground", "refexp", "detect")
FINE_TASKS = ("ground", "refexp", "detect")
TOKENIZER_DIR = "tokenizer"
ANSWERS_FILE = "answers.json"


@dataclass
class ModelCard:
    """``preset``: the architecture's name (``config.name``); ``family``: fiber, albef or vlmo;
    ``tasks``: the tasks the model has the heads (and files) for, see :func:`supported_tasks`;
    ``tokenizer`` / ``answers``: paths relative to the directory (None: not there); ``data``:
    the training data settings of the run that wrote it; ``metrics``: its evaluation;
    ``normalization``: the image input the model expects ("imagenet", or "official" for converted
    fine-grained checkpoints); ``itm_weight``: how much ITM counts when retrieval re-ranks
    (ITC + ``itm_weight`` x ITM: :mod:`fibervl.tasks.retrieval`), chosen on a validation split by
    retrieval fine-tuning with ``eval.itm_weight_split``, else 1; ``extra``: keys written by a
    newer fibervl, kept as they are."""

    preset: str = ""
    family: str = "fiber"
    tasks: list[str] = field(default_factory=list)
    tokenizer: str | None = None
    answers: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    normalization: str = "imagenet"
    itm_weight: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **json.loads(json.dumps(out, default=str))}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelCard":
        if not isinstance(data, dict):
            raise ValueError(f"a model card is a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})


def supported_tasks(config, has_answers: bool) -> list[str]:
    """The tasks a model of ``config`` (any family) can predict: retrieval with the ITC head,
    VQA with the VQA head and an answer list, NLVR2, captioning, and the three fine-grained
    tasks with a detector."""
    heads = set(getattr(config, "heads", ()))
    tasks = []
    if "itc" in heads:
        tasks.append("retrieval")
    if "vqa" in heads and has_answers:
        tasks.append("vqa")
    if "nlvr2" in heads:
        tasks.append("nlvr2")
    if "caption" in heads:
        tasks.append("caption")
    if getattr(config, "detection", None) is not None:
        tasks += FINE_TASKS
    return tasks


def make_card(config, directory: str | Path | None = None, data=None, metrics: dict | None = None,
              **changes) -> ModelCard:
    """The card of a model of ``config`` saved (or about to be saved) in ``directory``: the
    tokenizer and answer list are named when the directory holds them; ``data`` may be a
    dataclass (a recipe's data settings) or a dict."""
    directory = Path(directory) if directory is not None else None
    tokenizer = TOKENIZER_DIR if directory is not None and (directory / TOKENIZER_DIR).is_dir() else None
    answers = ANSWERS_FILE if directory is not None and (directory / ANSWERS_FILE).is_file() else None
    if dataclasses.is_dataclass(data):
        data = dataclasses.asdict(data)
    card = ModelCard(preset=config.name, family=config.family,
                     tasks=supported_tasks(config, answers is not None), tokenizer=tokenizer, answers=answers,
                     data=dict(data or {}), metrics=dict(metrics or {}))
    return dataclasses.replace(card, **changes)


def card_of(directory: str | Path) -> ModelCard:
    """The card saved in ``directory``'s config.json, or, for a directory saved without one, the
    card :func:`make_card` works out from its config and files (metrics from a ``metrics.json``
    beside the directory, as ``fibervl`` runs write it)."""
    from ..modeling.factory import read_model_config
    from ..modeling.pretrained import read_card

    directory = Path(directory)
    saved = read_card(directory)
    if saved is not None:
        return ModelCard.from_dict(saved)
    metrics_file = directory.parent / "metrics.json"
    metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else {}
    return make_card(read_model_config(directory), directory, metrics=metrics if isinstance(metrics, dict) else {})

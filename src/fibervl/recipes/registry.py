"""Every recipe, declared once: what trains it, what evaluates it, which commands it has.

A :class:`Recipe` is data: its config dataclass, its ``run(cfg)`` (build data, model and task,
train, evaluate, export ``run_dir/model``) and, for a task, its ``evaluate(cfg)`` of a saved
model. :mod:`fibervl.recipes.commands` turns each into its command-line commands
(``fibervl pretrain|finetune|evaluate|predict NAME``); :func:`recipes` lists them all.

A new stage or task: a module in ``recipes/`` with its config dataclass, ``run`` (and
``evaluate``) and a ``RECIPE = Recipe(...)``, named in :data:`MODULES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

# The modules that declare recipes, in the order the command line lists them.
MODULES = ("image_pretrain", "coarse_pretrain", "fine_pretrain", "albef_pretrain", "vlmo_pretrain",
           "retrieval", "vqa", "nlvr2", "caption", "fine_tasks")

# The friendly options every training command has (beside --config, --resume and key=value).
TRAIN_ALIASES = {"--init": "model.init", "--data-root": "data.root", "--run-dir": "train.run_dir",
                 "--max-steps": "train.max_steps", "--tokenizer": "data.tokenizer"}
# ... and every evaluate command: the trained model is --model DIR (model.init= is the same).
EVALUATE_ALIASES = {"--model": "model.init", "--data-root": "data.root", "--split": "data.eval_split",
                    "--num-eval": "data.num_eval", "--tokenizer": "data.tokenizer"}


@dataclass(frozen=True)
class Recipe:
    """One stage (``pretrain NAME``) or task (``finetune|evaluate|predict NAME``).

    ``config_cls``: the config dataclass (``--config FILE`` and ``key=value`` fill it);
    ``run(cfg) -> summary``: train, evaluate, export; ``summary["eval"]`` holds the final metrics.
    ``evaluate(cfg) -> metrics``: evaluate the saved model ``cfg.model.init`` (``--model DIR``);
    it returns None on the processes of a torchrun evaluation that do not report.
    ``predict``: whether ``fibervl predict NAME`` exists (:mod:`fibervl.predict.cli`).
    ``prepare(cfg, verb) -> cfg``: adjust a parsed config before the command runs (e.g. switch
    on one kind of data). ``train_aliases`` / ``evaluate_aliases``: the command's own friendly
    options (``{"--data-root": "data.root"}``), beside :data:`TRAIN_ALIASES` /
    :data:`EVALUATE_ALIASES`."""

    name: str
    summary: str
    config_cls: type
    run: Callable[[Any], dict]
    stage: str = "finetune"  # the training verb: "pretrain" or "finetune"
    evaluate: Callable[[Any], dict | None] | None = None
    predict: bool = False
    prepare: Callable[[Any, str], Any] | None = None
    train_aliases: Mapping[str, str] = field(default_factory=dict)
    evaluate_aliases: Mapping[str, str] = field(default_factory=dict)

    @property
    def verbs(self) -> tuple[str, ...]:
        """The commands of this recipe, e.g. ``("finetune", "evaluate", "predict")``."""
        return (self.stage,) + ("evaluate",) * (self.evaluate is not None) + ("predict",) * self.predict

    def aliases(self, verb: str) -> dict[str, str]:
        """The friendly options of ``fibervl VERB NAME`` -> the config keys they set."""
        if verb == "evaluate":
            return {**EVALUATE_ALIASES, **self.evaluate_aliases}
        return {**TRAIN_ALIASES, **self.train_aliases}


def recipes() -> dict[str, Recipe]:
    """Every recipe by name, in :data:`MODULES` order (a module may declare several: ``RECIPES``)."""
    found: dict[str, Recipe] = {}
    for name in MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        for recipe in getattr(module, "RECIPES", None) or (module.RECIPE,):
            found[recipe.name] = recipe
    return found


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; a clear error naming the known ones otherwise."""
    known = recipes()
    if name not in known:
        raise KeyError(f"no recipe {name!r}; known: {', '.join(known)}")
    return known[name]

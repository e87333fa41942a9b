"""Every training command starts from precision: auto and a run directory of its own."""

from __future__ import annotations

import importlib

import pytest

from fibervl.cli import RECIPES
from fibervl.engine.config import load_config

CONFIGS = {
    "coarse": ("CoarseConfig", "pretrain-coarse"), "albef": ("AlbefPretrainConfig", "pretrain-albef"),
    "fine": ("FineConfig", "pretrain-fine"), "vlmo": ("VlmoPretrainConfig", "pretrain-vlmo"),
    "retrieval": ("RetrievalConfig", "finetune-retrieval"), "vqa": ("VqaConfig", "finetune-vqa"),
    "nlvr2": ("Nlvr2Config", "finetune-nlvr2"), "caption": ("CaptionConfig", "finetune-caption"),
}


@pytest.mark.parametrize("recipe", sorted(CONFIGS))
def test_training_defaults(recipe):
    class_name, command = CONFIGS[recipe]
    module = importlib.import_module(RECIPES[recipe])
    cls = getattr(module, class_name)
    for train in (cls().train, load_config(cls, None, ["train.batch_size=8"]).train):
        # a train section given in part keeps the command's defaults
        assert train.precision == "auto"
        assert train.run_dir == f"runs/{command}"
        assert train.max_steps


@pytest.mark.parametrize("task", ["ground", "refexp", "detect"])
def test_fine_grained_tasks_name_their_own_run_directory(task):
    from fibervl.recipes.fine_tasks import _task_config

    assert _task_config(task, []).train.run_dir == f"runs/finetune-{task}"
    assert _task_config(task, ["train.run_dir=elsewhere"]).train.run_dir == "elsewhere"

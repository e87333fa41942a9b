"""Every training command starts from precision: auto and a run directory of its own."""

from __future__ import annotations

import pytest

from fibervl.engine.config import load_config
from fibervl.recipes.commands import parse
from fibervl.recipes.registry import get_recipe

COMMANDS = {"coarse": "pretrain-coarse", "albef": "pretrain-albef", "fine": "pretrain-fine", "vlmo": "pretrain-vlmo",
            "retrieval": "finetune-retrieval", "vqa": "finetune-vqa", "nlvr2": "finetune-nlvr2",
            "caption": "finetune-caption"}


@pytest.mark.parametrize("recipe", sorted(COMMANDS))
def test_training_defaults(recipe):
    command = COMMANDS[recipe]
    cls = get_recipe(recipe).config_cls
    for train in (cls().train, load_config(cls, None, ["train.batch_size=8"]).train):
        # a train section given in part keeps the command's defaults
        assert train.precision == "auto"
        assert train.run_dir == f"runs/{command}"
        assert train.max_steps


@pytest.mark.parametrize("task", ["ground", "refexp", "detect"])
def test_fine_grained_tasks_name_their_own_run_directory(task):
    recipe = get_recipe(task)
    assert parse(recipe, "finetune", []).train.run_dir == f"runs/finetune-{task}"
    assert parse(recipe, "finetune", ["train.run_dir=elsewhere"]).train.run_dir == "elsewhere"

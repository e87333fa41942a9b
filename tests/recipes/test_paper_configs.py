"""configs/paper/: every file loads with the config class of the recipe it names, through the
command's own parsing, with the paper's model, sources in placeholder DATA/ paths, and a header
naming the paper table and the official config it follows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fibervl.config import PRESETS
from fibervl.data.sources import DataSource
from fibervl.engine.config import load_config
from fibervl.recipes.caption import CaptionConfig
from fibervl.recipes.coarse_pretrain import CoarseConfig
from fibervl.recipes.fine_pretrain import FineConfig
from fibervl.recipes.commands import parse
from fibervl.recipes.nlvr2 import Nlvr2Config
from fibervl.recipes.registry import get_recipe, recipes
from fibervl.recipes.retrieval import RetrievalConfig
from fibervl.recipes.vqa import VqaConfig

PAPER = Path(__file__).resolve().parents[2] / "configs" / "paper"
# recipe name (fibervl.recipes.registry) -> its config class; a file is named RECIPE[_WHAT].yaml
CONFIGS = {"coarse": CoarseConfig, "fine": FineConfig, "retrieval": RetrievalConfig, "vqa": VqaConfig,
           "nlvr2": Nlvr2Config, "caption": CaptionConfig, "ground": FineConfig, "refexp": FineConfig,
           "detect": FineConfig}
FILES = sorted(PAPER.glob("*.yaml"))


def _recipe(path: Path) -> str:
    return path.stem.split("_")[0]


def test_every_stage_and_task_has_a_paper_config():
    names = {p.stem for p in FILES}
    assert {"coarse", "fine", "vqa", "nlvr2", "caption_mle", "caption_gold", "caption_scst", "retrieval_coco_itc",
            "retrieval_coco_itm", "retrieval_flickr_itc", "retrieval_flickr_itm", "refexp_refcoco",
            "refexp_refcocoplus", "refexp_refcocog", "ground_flickr30k", "detect_coco", "detect_lvis",
            "detect_odinw"} <= names
    assert set(CONFIGS) <= set(recipes())


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_paper_config_loads_with_its_recipe(path):
    recipe = _recipe(path)
    assert recipe in CONFIGS, f"{path.name}: no recipe named {recipe!r}"
    header = "".join(line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
                     if line.startswith("#"))
    assert "Paper:" in header and "Official config:" in header, path.name
    # the official file it follows exists in microsoft/FIBER's layout
    assert re.search(r"coarse_grained/fiber/config\.py|fine_grained/configs/\S+\.yaml", header), path.name
    # the command in the header runs this recipe with this file
    verb = "pretrain" if recipe in ("coarse", "fine") else "(finetune|evaluate)"
    assert re.search(rf"fibervl {verb} {recipe} .*--config configs/paper/{re.escape(path.name)}", header), path.name

    if recipe in ("ground", "refexp", "detect"):
        cfg = parse(get_recipe(recipe), "finetune", ["--config", str(path)])  # what `fibervl finetune detect --config` builds
    else:
        cfg = load_config(CONFIGS[recipe], path)
    assert isinstance(cfg, CONFIGS[recipe])
    assert cfg.model.preset in PRESETS and cfg.model.preset.startswith("fiber-base")
    sources = [*cfg.data.train_sources(), cfg.data.eval_source()]
    assert all(isinstance(s, DataSource) and s.annotations.startswith("DATA/") for s in sources), sources
    assert cfg.train.max_steps or cfg.train.epochs
    assert cfg.train.run_dir == f"runs/paper/{path.stem}"
    # the init of a later stage is an earlier stage's run
    if cfg.model.init.startswith("runs/paper/"):
        assert (PAPER / f"{cfg.model.init.split('/')[2]}.yaml").is_file() or "refexpclean" in cfg.model.init


def test_paper_settings_as_the_official_configs_state_them():
    """A few values checked against the official files by hand (microsoft/FIBER)."""
    vqa = load_config(VqaConfig, PAPER / "vqa.yaml")
    assert (vqa.data.image_size, vqa.train.optim.lr, vqa.train.optim.lr_multipliers["heads"], vqa.train.epochs) == \
        (576, 2e-5, 50.0, 10)
    assert vqa.train.batch_size * vqa.train.grad_accum_steps * 8 == 512
    assert [s.split for s in vqa.data.train_sources()] == ["train2014", "val2014"]
    fine = load_config(FineConfig, PAPER / "fine.yaml")
    assert (fine.train.max_steps, fine.train.optim.lr, fine.train.optim.lr_multipliers["text"]) == (800000, 1e-4, 0.1)
    assert (fine.train.schedule.name, fine.train.schedule.milestones, fine.train.schedule.warmup) == \
        ("step", (0.67, 0.89), 2000)
    assert (fine.data.image_size, fine.data.max_size, fine.data.train_sizes) == (800, 1333, (480, 560, 640, 720, 800))
    odinw = parse(get_recipe("detect"), "finetune", ["--config", str(PAPER / "detect_odinw.yaml")])
    (source,) = odinw.data.train_sources()
    assert (source.format, source.shots, source.seed, source.weight) == ("odinw", 5, 3, 2.0)
    caption = {o: load_config(CaptionConfig, PAPER / f"caption_{o}.yaml") for o in ("mle", "gold", "scst")}
    assert [(c.caption.objective, c.train.optim.lr) for c in caption.values()] == \
        [("mle", 5e-5), ("gold", 1e-5), ("scst", 1e-6)]

"""bench/external_vqa.py writes a VQA set in the VQAv2 layout that fibervl reads as it reads
VQAv2, with answers true of the images, and the documented fine-tuning config trains epochs."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from PIL import Image

from fibervl.data.readers import VqaReader

ROOT = Path(__file__).resolve().parents[2]


def test_external_vqa_set_reads_as_vqav2_and_its_answers_agree(tmp_path):
    out = tmp_path / "ext"
    subprocess.run([sys.executable, str(ROOT / "bench" / "external_vqa.py"), str(out), "--size", "64",
                    "--train", "12", "--val", "3"], check=True, capture_output=True, text=True, timeout=120)
    train = list(VqaReader(out, "train2014", image_root=out))
    assert len(train) == 48 and len(list(VqaReader(out, "val2014", image_root=out))) == 12
    by_image = defaultdict(dict)
    for s in train:
        assert len(s.answers) == 10 and len(set(s.answers)) == 1
        assert Image.open(s.image_path).size == (64, 64)
        by_image[s.image_id][s.text] = s.answers[0]
    answers = set()
    for questions in by_image.values():
        color, shape = questions["what color is the shape?"], questions["what shape is in the image?"]
        (asked_color,) = [q for q in questions if q.startswith("is the shape ")]
        (asked_shape,) = [q for q in questions if q.startswith("is there a ")]
        assert questions[asked_color] == ("yes" if asked_color == f"is the shape {color}?" else "no")
        assert questions[asked_shape] == ("yes" if asked_shape == f"is there a {shape} in the image?" else "no")
        answers.update((questions[asked_color], questions[asked_shape]))
    assert answers == {"yes", "no"}


def test_the_documented_external_vqa_config_is_a_full_fine_tuning_of_epochs(monkeypatch):
    from fibervl.recipes.commands import parse
    from fibervl.recipes.registry import get_recipe

    monkeypatch.chdir(ROOT)
    cfg = parse(get_recipe("vqa"), "finetune", ["--config", "configs/fiber-tiny_vqa.yaml", "--init", "RUN",
                                                  "--train-data", "vqav2,split=train2014:D:D",
                                                  "--eval-data", "vqav2,split=val2014:D:D"])
    assert (cfg.train.epochs, cfg.train.max_steps) == (8, None)  # not the recipe's default 100 steps
    assert not cfg.model.freeze_prefix and not cfg.data.cache_image_prefix and cfg.data.num_eval == 0

"""The demo without a browser: which model serves each task, the answers the page shows, the
command's refusals (no gradio, --share)."""

from __future__ import annotations

import shutil
import sys

import pytest
from PIL import Image

from fibervl.cli import main
from fibervl.demo import RUN_STAGES, DemoModels, find_models


def test_a_run_directory_serves_each_task_from_its_own_stage(run_dir):
    stages = run_dir / "stages"
    assert find_models([run_dir]) == {"detect": stages / "detection" / "model", "vqa": stages / "vqa" / "model",
                                      "caption": stages / "caption" / "model"}
    # The detector could also ground, but a run's grounding model is stages/grounding: none here.
    # A model directory given as well serves what the run lacks; the first --model given wins.
    table = find_models([stages / "caption", run_dir, stages / "detection" / "model"])
    assert table == {"detect": stages / "detection" / "model", "ground": stages / "detection" / "model",
                     "refexp": stages / "detection" / "model", "vqa": stages / "caption" / "model",
                     "caption": stages / "caption" / "model"}


def test_run_stage_names_are_those_fibervl_run_writes():
    from fibervl.mainjob.job import TASK_STAGES

    assert set(RUN_STAGES.values()) <= set(TASK_STAGES)


def test_a_directory_without_demo_tasks_is_an_error_naming_what_it_holds(run_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a model directory"):
        find_models([tmp_path])
    other = tmp_path / "other-run"
    shutil.copytree(run_dir / "stages" / "vqa", other / "stages" / "coarse")
    with pytest.raises(ValueError, match=r"stages with a model are \['coarse'\]"):
        find_models([other])


def test_answers_of_every_task(run_dir, shapes_png):
    models = DemoModels(find_models([run_dir, run_dir / "stages" / "detection"]))
    assert models._models["detect"] is models._models["ground"]  # one directory, loaded once
    image = Image.open(shapes_png)
    det = models.detect(image, " square , circle,", threshold=0.0)
    assert det.result["detections"] and {d["class"] for d in det.result["detections"]} <= {"square", "circle"}
    lines = det.summary.splitlines()
    assert lines[0] == f"{len(det.result['detections'])} boxes" and len(lines) == len(det.result["detections"]) + 1
    assert det.picture.size == image.size and det.picture.tobytes() != image.convert("RGB").tobytes()
    assert len(models.detect(image, "square, circle", threshold=0.0, top=2).result["detections"]) == 2
    none = models.detect(image, "square", threshold=1.01)
    assert none.result["detections"] == [] and "lower the threshold" in none.summary
    ground = models.ground(image, "a red square left of a blue circle", "red square, blue circle")
    assert [p["phrase"] for p in ground.result["phrases"]] == ["red square", "blue circle"]
    assert models.refexp(image, "the red square").result["box"]
    vqa = models.vqa(image, "what color is the circle?")
    assert vqa.result["answer"] in models._models["vqa"][1].answers and vqa.summary.splitlines()[0].startswith(vqa.result["answer"])
    caption = models.caption(image)
    assert caption.summary == caption.result["caption"] and caption.picture.height > 0
    for refused in (lambda: models.detect(image, " , "), lambda: models.vqa(image, "  "),
                    lambda: models.ground(image, "a red square", "green heart")):
        with pytest.raises(ValueError):
            refused()


def test_missing_gradio_names_the_extra(run_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ModuleNotFoundError
    assert main(["demo", "--model", str(run_dir)]) == 1
    assert "pip install 'fibervl[demo]'" in capsys.readouterr().err


def test_no_share_link(run_dir):
    with pytest.raises(SystemExit):
        main(["demo", "--model", str(run_dir), "--share"])

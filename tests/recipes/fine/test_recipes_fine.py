"""`fibervl pretrain fine`, `finetune|evaluate|predict ground|refexp|detect` end to end on the
tiny shapes set (a few steps each; the numbers are not meaningful, the wiring is)."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

import dataclasses

from fibervl.cli import main
from fibervl.config import DetectionConfig
from fibervl.data import Tokenizer
from fibervl.modeling.factory import create_model, read_model_config
from fibervl.modeling.fiber import FiberModel
from fibervl.testing.configs import micro_config

# chunk_size 4: the micro model's 16 query tokens hold 4 class names, so evaluation chunks prompts
COMMON = ["train.batch_size=4", "train.progress_bar=false", "train.ckpt_every=null", "train.eval_every=null",
          "data.num_eval=4", "data.eval_batch_size=4", "data.chunk_size=4", "data.max_classes=4"]


@pytest.fixture(scope="module")
def fine_run(shapes_tiny, tmp_path_factory):
    pytest.importorskip("pycocotools")
    root = tmp_path_factory.mktemp("fine")
    tok = Tokenizer.from_pretrained(shapes_tiny / "tokenizer")
    # a (never trained) coarse micro model stands in for a coarse checkpoint; the fine preset is
    # the same backbone with the detector (a config directory works as model.preset)
    micro = micro_config()
    (root / "coarse_cfg").mkdir()
    micro.save(root / "coarse_cfg" / "config.json")
    create_model(read_model_config(root / "coarse_cfg"), tokenizer=tok, seed=None).save_pretrained(root / "coarse")
    fine = micro.replace(vision=dataclasses.replace(micro.vision, image_size=128, feature_norms=(1, 2, 3)), heads=(),
                         detection=DetectionConfig(channels=16, num_blocks=1, num_groups=4,
                                                   anchor_sizes=(16, 32, 64, 128, 256), max_query_len=16))
    (root / "fine_cfg").mkdir()
    fine.save(root / "fine_cfg" / "config.json")
    args = ["pretrain", "fine", "--config", "configs/fiber-tiny_fine_shapes.yaml", f"data.root={shapes_tiny}",
            f"model.preset={root / 'fine_cfg'}", f"model.init={root / 'coarse'}", f"train.run_dir={root / 'run'}",
            "train.max_steps=2", *COMMON]
    assert main(args) == 0
    return root


def test_pretrain_fine_reuses_coarse_weights_and_reports(fine_run):
    report = json.loads((fine_run / "run" / "init_report.json").read_text())
    assert report["new"] and all(k.startswith(("detector.", "vision.feature_norms.")) for k in report["new"])
    assert any(k.startswith("heads.") for k in report["unused"])
    metrics = json.loads((fine_run / "run" / "metrics.json").read_text())
    for key in ("ground_r1", "ground_r10", "rec_acc", "rec_acc_seen", "det_AP", "det_AP50", "zs_AP"):
        assert key in metrics
    assert 0 <= metrics["ground_r1"] <= metrics["ground_r5"] <= metrics["ground_r10"] <= 100
    model = FiberModel.from_pretrained(fine_run / "run" / "model")
    assert model.config.detection is not None and model.config.heads == ()
    # the shapes config adds the word-region alignment term to the official losses
    logged = [json.loads(line) for line in (fine_run / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [row for row in logged if "loss_dot_product_token" in row]
    assert losses and all(math.isfinite(row["loss_align"]) and row["loss_align"] > 0 for row in losses)


@pytest.mark.parametrize("task,key", [("ground", "ground_r1="), ("refexp", "rec_acc="), ("detect", "zs_AP=")])
def test_finetune_and_evaluate(task, key, fine_run, shapes_tiny, tmp_path, capsys):
    model_dir = fine_run / "run" / "model"
    assert main(["finetune", task, f"data.root={shapes_tiny}", f"model.preset={model_dir}", f"model.init={model_dir}",
                 f"train.run_dir={tmp_path / 'ft'}", "train.max_steps=1", *COMMON]) == 0
    init = json.loads((tmp_path / "ft" / "init_report.json").read_text())
    assert init["new"] == [] and init["unused"] == []  # same architecture: everything re-used
    assert main(["evaluate", task, f"data.root={shapes_tiny}", f"model.init={tmp_path / 'ft' / 'model'}",
                 "data.num_eval=4", "data.chunk_size=4"]) == 0
    assert key in capsys.readouterr().out


def test_predict_prints_json_and_writes_png(fine_run, shapes_tiny, tmp_path, capsys):
    image = next((shapes_tiny / "images" / "val").iterdir())
    tok = str(shapes_tiny / "tokenizer")
    model = str(fine_run / "run" / "model")
    out = tmp_path / "det.png"
    assert main(["predict", "detect", "--model", model, "--tokenizer", tok, "--image", str(image),
                 "--classes", "star, circle,heart", "--threshold", "0", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["png"] == str(out) and result["image"] == str(image)
    assert all(d["class"] in ("star", "circle", "heart") and len(d["box"]) == 4 for d in result["detections"])
    assert Image.open(out).size == Image.open(image).size
    scores = sorted((d["score"] for d in result["detections"]), reverse=True)
    assert main(["predict", "detect", "--model", model, "--tokenizer", tok, "--image", str(image),
                 "--classes", "star, circle,heart", "--threshold", "0", "--top", "2", "--out", str(out)]) == 0
    top = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["detections"]
    assert sorted((d["score"] for d in top), reverse=True) == scores[:2]  # the two best of the same boxes
    out = tmp_path / "ground.png"
    # the exported model directory carries its tokenizer: no --tokenizer needed
    assert (fine_run / "run" / "model" / "tokenizer").is_dir()
    assert main(["predict", "ground", "--model", model, "--image", str(image),
                 "--text", "a red star and a blue circle", "--phrases", "red star,blue circle", "--top-k", "2",
                 "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [p["phrase"] for p in result["phrases"]] == ["red star", "blue circle"]
    assert all(len(p["boxes"]) == 2 and p["scores"][0] >= p["scores"][1] for p in result["phrases"])
    assert out.is_file()


def test_zero_shot_prompts_name_every_class(fine_run, shapes_tiny, monkeypatch):
    """Zero-shot AP is averaged over the held-out classes with every class named in the prompts
    (GLIP's LVIS protocol): with the held-out names alone, an object of a seen shape could only
    be labelled with a held-out name."""
    import fibervl.tasks.grounding as grounding
    from fibervl.data.shapes import ShapesDataset
    from fibervl.recipes.fine_pretrain import EvalSets, FineData, evaluate_all

    shapes = ShapesDataset(shapes_tiny)
    data = FineData(root=str(shapes_tiny), num_eval=4, eval_batch_size=4, chunk_size=4)
    sets = EvalSets(data, ("detection", "zero_shot"))
    assert sets.category_ids["zero_shot"] == shapes.held_out_category_ids
    assert sorted(sets.prompt_ids["zero_shot"]) == sorted(shapes.seen_category_ids + shapes.held_out_category_ids)
    assert "detection" not in sets.prompt_ids  # seen AP: the seen names alone, as before

    named, scored = [], []
    real_results, real_ap = grounding.detection_results, grounding._detection_ap
    monkeypatch.setattr(grounding, "detection_results",
                        lambda model, tok, reader, ids, *a, **k: named.append(list(ids)) or real_results(model, tok, reader, ids, *a, **k))
    monkeypatch.setattr(grounding, "_detection_ap",
                        lambda reader, found, ids, image_ids: scored.append(list(ids)) or real_ap(reader, found, ids, image_ids))
    model = FiberModel.from_pretrained(fine_run / "run" / "model")
    tok = Tokenizer.from_pretrained(shapes_tiny / "tokenizer")
    image_size, max_len = data.input_sizes(model.config)
    metrics = evaluate_all(model, tok, data, sets, image_size, max_len)
    assert "zs_AP" in metrics and "det_AP" in metrics
    assert named == [shapes.seen_category_ids, sets.prompt_ids["zero_shot"]]
    assert scored == [shapes.seen_category_ids, shapes.held_out_category_ids]


def test_a_scored_class_must_be_named_in_the_prompts():
    from fibervl.tasks.grounding import evaluate_detection

    with pytest.raises(ValueError, match=r"classes \[9\] are scored but not named"):
        evaluate_detection(None, None, None, [8, 9], image_size=128, max_len=16, prompt_ids=[1, 2, 8])

"""The main job's optional image-only stage (``JobPreset.image``, ``fibervl run --image-steps``)
and its recipe ``fibervl pretrain image``."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from fibervl.cli import main
from fibervl.experiment import ModelSpec, load_tokenizer
from fibervl.mainjob.job import PRETRAIN_STAGES, JobContext, coarse_config, coarse_itc_config, pretrain_stages
from fibervl.mainjob.presets import PRESETS, get_job_preset
from fibervl.mainjob.stages import StageRunner
from fibervl.data import Processor
from fibervl.data.samples import Sample
from fibervl.data.transforms import eval_transforms
from fibervl.recipes.image_pretrain import FreshSceneLabels, ImageLabelData, read_image_labels


def with_image_steps(preset, steps: int):
    return dataclasses.replace(preset, image=dataclasses.replace(preset.image, steps=steps))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_runs_the_image_stage_first_and_zero_steps_drop_it(name):
    preset = get_job_preset(name)
    assert preset.image.steps > 0
    assert list(pretrain_stages(preset, "fiber")) == ["image", "coarse-itc", "coarse", "fine"]
    assert list(pretrain_stages(with_image_steps(preset, 0), "fiber")) == ["coarse-itc", "coarse", "fine"]
    # the image stage trains FIBER's tower: the other families never run it
    assert "image" not in pretrain_stages(preset, "albef") and "image" not in pretrain_stages(preset, "vlmo")


def test_coarse_stages_start_from_the_image_stage_only_when_it_runs(tmp_path):
    preset = get_job_preset("quick")
    off = JobContext(with_image_steps(preset, 0), tmp_path, tmp_path / "data", StageRunner(tmp_path))
    assert "init" not in coarse_itc_config(off, tmp_path)["model"]
    on = JobContext(with_image_steps(preset, 5), tmp_path, tmp_path / "data", StageRunner(tmp_path))
    assert coarse_itc_config(on, tmp_path)["model"]["init"] == str(tmp_path / "stages" / "image" / "model")
    # without the ITC-only stage, the fused coarse stage is the one that starts from it
    no_itc = dataclasses.replace(on, preset=dataclasses.replace(on.preset, itc_steps=0))
    assert coarse_config(no_itc, tmp_path)["model"]["init"] == str(tmp_path / "stages" / "image" / "model")
    assert coarse_config(on, tmp_path)["model"]["init"] == str(tmp_path / "stages" / "coarse-itc" / "model")
    # the image stage's config is one its recipe accepts
    assert PRETRAIN_STAGES["image"].build(on, tmp_path / "image").train.batch_size == preset.image.batch_size


def test_image_labels_are_each_images_colours_and_seen_shapes(shapes_tiny):
    names, items = read_image_labels(shapes_tiny, "train")
    coco = json.loads((shapes_tiny / "detection" / "instances_train.json").read_text())
    held_out = json.loads((shapes_tiny / "dataset.json").read_text())["held_out_shapes"]
    assert held_out and not {f"shape:{s}" for s in held_out} & set(names)
    assert len(items) == len(coco["images"])
    first = coco["images"][0]
    objects = [a for a in coco["annotations"] if a["image_id"] == first["id"]]
    shapes = {c["id"]: c["name"] for c in coco["categories"]}
    expected = {f"color:{a['attributes']['color']}" for a in objects} | {f"shape:{shapes[a['category_id']]}" for a in objects}
    path, shown = items[0]
    assert path == shapes_tiny / "images" / "train" / first["file_name"] and path.is_file()
    assert {names[i] for i in shown} == expected


def test_missing_annotations_are_named(tmp_path):
    with pytest.raises(ValueError, match="instances_train.json: no such file"):
        read_image_labels(tmp_path, "train")


def test_image_stage_trains_the_tower_alone_and_the_coarse_model_starts_from_it(shapes_tiny, tmp_path):
    run_dir = tmp_path / "image"
    assert main(["pretrain", "image", f"data.root={shapes_tiny}", f"train.run_dir={run_dir}", "train.max_steps=2",
                 "train.batch_size=8", "train.progress_bar=false", "data.num_eval=8"]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train_images"] == 8 and 0 <= metrics["train_exact"] <= 100
    data = ImageLabelData(root=str(shapes_tiny))
    fresh = ModelSpec(preset="fiber-tiny").build(load_tokenizer(data))
    trained = ModelSpec(preset="fiber-tiny", init=str(run_dir / "model")).build(load_tokenizer(data, str(run_dir / "model")))
    before, after = fresh.state_dict(), trained.state_dict()
    # the tower moved; the text side got no gradient and kept its initial weights
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("vision."))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("text."))
    # the coarse stage builds its model as ``trained`` was built: from the image stage's directory


def test_image_stage_gives_the_same_tower_whatever_the_process_random_state(shapes_tiny, tmp_path):
    """Its label head is drawn from the model's seed, not from the process's stream (which
    differs from run to run): two runs that start from different global states train the same tower."""
    towers = []
    for k, state in enumerate((11, 12345)):
        torch.manual_seed(state)
        run_dir = tmp_path / f"image{k}"
        assert main(["pretrain", "image", f"data.root={shapes_tiny}", f"train.run_dir={run_dir}", "train.max_steps=2",
                     "train.batch_size=8", "train.progress_bar=false", "data.num_eval=8"]) == 0
        data = ImageLabelData(root=str(shapes_tiny))
        model = ModelSpec(preset="fiber-tiny", init=str(run_dir / "model")).build(load_tokenizer(data, str(run_dir / "model")))
        towers.append({k: v for k, v in model.state_dict().items() if k.startswith("vision.")})
    assert all(torch.equal(towers[0][k], towers[1][k]) for k in towers[0])


def test_fresh_scenes_are_one_labelled_object_drawn_the_same_way_every_time(shapes_tiny):
    names, _ = read_image_labels(shapes_tiny, "train")
    processor = Processor(eval_transforms(128))
    fresh = FreshSceneLabels(shapes_tiny, 200, names, processor)
    again = FreshSceneLabels(shapes_tiny, 200, names, processor)
    assert len(fresh) == 200
    first, other = fresh[3], again[3]
    assert torch.equal(first["images"], other["images"]) and torch.equal(first["labels"], other["labels"])
    assert not torch.equal(first["images"], fresh[4]["images"])  # a new scene at every index
    held_out = json.loads((shapes_tiny / "dataset.json").read_text())["held_out_shapes"]
    kinds = [sorted(names[j].split(":")[0] for j in fresh[i]["labels"].nonzero().flatten().tolist()) for i in range(200)]
    # one colour and one shape each, except held-out shapes, whose shape is never a label
    assert all(k in (["color", "shape"], ["color"]) for k in kinds)
    assert ["color"] in kinds and held_out


def test_fresh_scenes_are_none_of_the_data_sets_images(shapes_tiny):
    """The fresh split is drawn under its own name: no training, validation or test image recurs."""
    from PIL import Image
    import numpy as np

    names, _ = read_image_labels(shapes_tiny, "train")
    fresh = FreshSceneLabels(shapes_tiny, 20, names, Processor(eval_transforms(128)))
    files = sorted((shapes_tiny / "images").rglob("*.*"))[:40]
    rendered = [fresh[i]["images"] for i in range(20)]
    for path in files:
        pixels = Processor(eval_transforms(128))(Sample(sample_id="x", image_id=0, image=Image.open(path).convert("RGB")))
        assert all(float((pixels.pixel_values - r).abs().mean()) > 0.05 for r in rendered), path
    assert np.isfinite(float(rendered[0].mean()))


def test_the_job_draws_one_fresh_scene_per_image_stage_draw(tmp_path):
    preset = get_job_preset("default")
    ctx = JobContext(preset, tmp_path, tmp_path / "data", StageRunner(tmp_path))
    cfg = PRETRAIN_STAGES["image"].build(ctx, tmp_path / "image")
    assert cfg.data.fresh_scenes == preset.image.steps * preset.image.batch_size
    off = dataclasses.replace(ctx, preset=dataclasses.replace(preset, fresh_image_scenes=False))
    assert PRETRAIN_STAGES["image"].build(off, tmp_path / "image").data.fresh_scenes == 0


def test_image_stage_on_fresh_scenes_trains(shapes_tiny, tmp_path):
    run_dir = tmp_path / "image"
    assert main(["pretrain", "image", f"data.root={shapes_tiny}", f"train.run_dir={run_dir}", "train.max_steps=2",
                 "train.batch_size=8", "train.progress_bar=false", "data.num_eval=8", "data.fresh_scenes=16"]) == 0
    assert json.loads((run_dir / "metrics.json").read_text())["train_images"] == 8

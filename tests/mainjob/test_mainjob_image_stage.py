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


def test_image_labels_are_each_images_colours_sizes_and_seen_shapes(shapes_tiny):
    names, items = read_image_labels(shapes_tiny, "train")
    coco = json.loads((shapes_tiny / "detection" / "instances_train.json").read_text())
    held_out = json.loads((shapes_tiny / "dataset.json").read_text())["held_out_shapes"]
    assert held_out and not {f"shape:{s}" for s in held_out} & set(names)
    assert len(items) == len(coco["images"])
    first = coco["images"][0]
    objects = [a for a in coco["annotations"] if a["image_id"] == first["id"]]
    shapes = {c["id"]: c["name"] for c in coco["categories"]}
    expected = ({f"color:{a['attributes']['color']}" for a in objects} | {f"shape:{shapes[a['category_id']]}" for a in objects}
                | {f"size:{a['attributes']['size']}" for a in objects})
    assert {n for n in names if n.startswith("size:")} == {"size:small", "size:medium", "size:large"}
    path, shown = items[0]
    assert path == shapes_tiny / "images" / "train" / first["file_name"] and path.is_file()
    assert {names[i] for i in shown} == expected


def test_label_kinds_choose_the_labels_and_the_presets_name_theirs(shapes_tiny, tmp_path):
    names, items = read_image_labels(shapes_tiny, "train", ("color", "shape"))
    assert names and not any(n.startswith("size:") for n in names)
    assert all(max(shown) < len(names) for _, shown in items)
    only_sizes, _ = read_image_labels(shapes_tiny, "train", ("size",))
    assert only_sizes == ["size:large", "size:medium", "size:small"]
    with pytest.raises(ValueError, match="label_kinds must be some of"):
        read_image_labels(shapes_tiny, "train", ("colour",))
    for name, kinds in (("default", ["color", "shape", "size"]), ("quick", ["color", "shape"])):
        ctx = JobContext(get_job_preset(name), tmp_path, tmp_path / "data", StageRunner(tmp_path))
        config = PRETRAIN_STAGES["image"].build(ctx, tmp_path / "image")
        assert list(config.data.label_kinds) == kinds


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
    kinds = [sorted(names[j].split(":")[0] for j in fresh[i]["labels"].nonzero().flatten().tolist()) for i in range(200)]
    # one colour, shape and size each: no scene shows a held-out shape, which would have no shape label
    assert all(k == ["color", "shape", "size"] for k in kinds)
    shown = {names[j] for i in range(200) for j in fresh[i]["labels"].nonzero().flatten().tolist()}
    assert len([n for n in shown if n.startswith("shape:")]) == len([n for n in names if n.startswith("shape:")])


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


def _object(shape, color, cx, cy, box, size="small"):
    from fibervl.data.shapes.scene import ObjectSpec

    obj = ObjectSpec(shape=shape, color=color, size=size, cx=cx, cy=cy, extent=box[2] - box[0], rotation=0.0,
                     texture="plain", shade_seed=0)
    obj.visible_box = box
    return obj


def test_token_labels_name_the_object_centred_in_each_cell():
    """A 4 x 4 grid of 32-pixel cells over a 128-pixel scene (row-major, as the tower's tokens)."""
    from fibervl.data.shapes.scene import SceneSpec
    from fibervl.recipes.image_pretrain import token_labels

    index = {"color:red": 0, "color:blue": 1, "shape:star": 2, "shape:ring": 3, "size:small": 4, "size:large": 5}
    scene = SceneSpec(0, "x", 128, "plain", (128, 128, 128), 0)
    scene.objects = [
        _object("star", "red", 48, 16, (36.0, 4.0, 60.0, 28.0)),  # within cell (0, 1)
        _object("heart", "blue", 112, 112, (100.0, 100.0, 124.0, 124.0)),  # held out: colour only, cell (3, 3)
        # centre in (2, 2); covers rows 1-2, cols 1-3
        _object("ring", "red", 80, 70, (60.0, 50.0, 100.0, 90.0), size="large"),
    ]
    labels, scored = token_labels(scene, 4, index)
    assert labels.shape == (16, 6) and scored.shape == (16,)
    assert scored[1] and labels[1].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    # a held-out shape is never a label; its colour and size are
    assert scored[15] and labels[15].tolist() == [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert scored[10] and labels[10].tolist() == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    # cells the ring covers without its centre are not scored; untouched cells are background
    assert not scored[5] and not scored[6] and not scored[7] and not scored[9] and not scored[11]
    assert scored[0] and labels[0].sum() == 0 and scored[12] and labels[12].sum() == 0
    # two centres in one cell: neither is scored there
    scene.objects.append(_object("star", "blue", 20, 20, (14.0, 14.0, 26.0, 26.0)))
    scene.objects.append(_object("ring", "blue", 12, 12, (6.0, 6.0, 18.0, 18.0)))
    labels, scored = token_labels(scene, 4, index)
    assert not scored[0]


def test_fresh_scenes_of_several_objects_label_every_object_and_their_tokens(shapes_tiny):
    names, _ = read_image_labels(shapes_tiny, "train")
    fresh = FreshSceneLabels(shapes_tiny, 50, names, Processor(eval_transforms(128)), max_objects=3, grid=4)
    colours = [int(fresh[i]["labels"][[j for j, n in enumerate(names) if n.startswith("color:")]].sum())
               for i in range(50)]
    assert max(colours) > 1  # several objects, several colours
    item = fresh[7]
    assert item["token_labels"].shape == (16, len(names)) and item["token_mask"].dtype == torch.bool
    # every label a token shows is one the image shows
    shown = item["labels"] > 0
    assert (item["token_labels"][item["token_mask"]] <= shown.float()).all()
    again = FreshSceneLabels(shapes_tiny, 50, names, Processor(eval_transforms(128)), max_objects=3, grid=4)[7]
    assert torch.equal(item["token_labels"], again["token_labels"]) and torch.equal(item["images"], again["images"])
    with pytest.raises(ValueError, match="fresh_objects must be"):
        FreshSceneLabels(shapes_tiny, 5, names, Processor(eval_transforms(128)), max_objects=0)


def test_token_labels_train_the_token_head_and_need_fresh_scenes(shapes_tiny, tmp_path, capsys):
    from fibervl.tasks.image_labels import ImageLabelTask

    torch.manual_seed(0)
    data = ImageLabelData(root=str(shapes_tiny))
    model = ModelSpec(preset="fiber-tiny").build(load_tokenizer(data))
    names, _ = read_image_labels(shapes_tiny, "train")
    fresh = FreshSceneLabels(shapes_tiny, 4, names, Processor(eval_transforms(128)), max_objects=3, grid=4)
    batch = {k: torch.stack([fresh[i][k] for i in range(4)]) for k in fresh[0]}
    plain = ImageLabelTask(model.vision.dims[-1], len(names))
    task = ImageLabelTask(model.vision.dims[-1], len(names), token_weight=2.0)
    task.head.load_state_dict(plain.head.state_dict())
    out = task.training_step(model, batch)
    base = plain.training_step(model, batch)
    torch.testing.assert_close(out["loss"], base["loss"] + 2.0 * out["token_bce"])
    out["loss"].backward()
    assert task.token_head.weight.grad is not None and task.token_head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs token labels"):
        task.training_step(model, {"images": batch["images"], "labels": batch["labels"]})
    with pytest.raises(ValueError, match="token_weight must be"):
        ImageLabelTask(8, 3, token_weight=-1.0)
    # the recipe refuses token labels without rendered scenes
    assert main(["pretrain", "image", f"data.root={shapes_tiny}", f"train.run_dir={tmp_path / 'x'}",
                 "train.max_steps=1", "data.token_weight=1"]) == 1
    assert "data.token_weight needs data.fresh_scenes" in capsys.readouterr().err
    run_dir = tmp_path / "tok"
    assert main(["pretrain", "image", f"data.root={shapes_tiny}", f"train.run_dir={run_dir}", "train.max_steps=2",
                 "train.batch_size=8", "train.progress_bar=false", "data.num_eval=8", "data.fresh_scenes=16",
                 "data.fresh_objects=3", "data.token_weight=1"]) == 0
    assert (run_dir / "model" / "model.safetensors").is_file()

"""The main job's pieces: stage records and skipping, --redo, baselines, the results table."""

import json
from pathlib import Path

import pytest

from fibervl.mainjob.cli import STAGE_ORDER, redo_set
from fibervl.mainjob.report import breakdown_lines, format_text_table, results_table
from fibervl.mainjob.stages import StageFailed, StageRunner


def test_finished_stage_is_skipped_and_redo_runs_it_again(tmp_path):
    calls = []

    def stage(d):
        calls.append(d)
        (d / "model.txt").write_text("weights")
        return {"value": len(calls)}

    runner = StageRunner(tmp_path, echo=lambda s: None)
    assert runner.run("coarse", stage) == {"value": 1}
    assert StageRunner(tmp_path, echo=lambda s: None).run("coarse", stage) == {"value": 1}
    assert len(calls) == 1
    record = json.loads((tmp_path / "stages" / "coarse" / "stage.json").read_text())
    assert record["status"] == "done" and record["seconds"] >= 0
    assert StageRunner(tmp_path, redo={"coarse"}, echo=lambda s: None).run("coarse", stage) == {"value": 2}


def test_failed_stage_stops_with_its_name_and_keeps_earlier_stages(tmp_path):
    runner = StageRunner(tmp_path, echo=lambda s: None)
    runner.run("coarse", lambda d: {"ok": True})

    def broken(d):
        raise ValueError("vocabulary of 0 answers")

    with pytest.raises(StageFailed, match="stage 'vqa' failed.*vocabulary of 0 answers"):
        runner.run("vqa", broken)
    record = json.loads((tmp_path / "stages" / "vqa" / "stage.json").read_text())
    assert record["status"] == "failed" and "ValueError" in record["error"]
    # the failed stage runs again next time; the finished one does not
    again = StageRunner(tmp_path, echo=lambda s: None)
    assert again.finished("coarse") is not None and again.finished("vqa") is None


def test_a_planned_stage_says_where_the_job_stands(tmp_path):
    lines = []
    runner = StageRunner(tmp_path, echo=lines.append, plan=["data", "coarse", "vqa"])
    runner.run("coarse", lambda d: {})
    runner.run("extra", lambda d: {})  # not in the plan: no position to give
    assert lines[0].startswith("[coarse] running in ") and "(stage 2 of 3, 0 min 0 s into the job)" in lines[0]
    assert lines[2] == f"[extra] running in {tmp_path / 'stages' / 'extra'}"


def test_redo_of_a_pretraining_stage_redoes_everything_after_it():
    assert redo_set("coarse") == set(STAGE_ORDER[STAGE_ORDER.index("coarse"):])
    assert redo_set("vqa,nlvr2") == {"vqa", "nlvr2"}
    assert redo_set("all") == {"all"}
    assert redo_set("") == set()
    with pytest.raises(ValueError, match="unknown stage"):
        redo_set("coarse,nope")


def test_results_table_says_which_tasks_beat_their_baseline():
    tasks = {"vqa": {"metric": "accuracy", "value": 61.0, "baseline": "text-only prior", "baseline_value": 42.0},
             "nlvr2": {"metric": "accuracy", "value": 50.0, "baseline": "chance", "baseline_value": 50.0},
             "caption": {"metric": "CIDEr", "value": 52.89, "baseline": "best constant", "baseline_value": 52.86},
             "detection": {"metric": "AP", "value": 1.01, "baseline": "chance", "baseline_value": 0.01}}
    rows = results_table(tasks)
    # a tie, or a lead under one point, does not beat a baseline
    assert [r[-1] for r in rows] == ["yes", "NO", "NO", "yes"]
    text = format_text_table(rows)
    assert "VQA" in text and "42.00" in text and "61.00" in text
    long_name = "R@1, mean of image->text and text->image (dual encoder, top-16 re-ranked by ITM)"
    tasks["vqa"]["metric"] = long_name
    assert long_name in format_text_table(results_table(tasks))  # named in full, never cut
    tasks["vqa"]["breakdown"] = "yes/no 70.00, number 50.00"
    assert breakdown_lines(tasks) == ["VQA: yes/no 70.00, number 50.00"]


def test_interrupted_stage_is_not_recorded_as_done(tmp_path):
    from fibervl.mainjob.job import _finished
    from fibervl.mainjob.stages import StageInterrupted

    runner = StageRunner(tmp_path, echo=lambda s: None)
    with pytest.raises(StageInterrupted, match="stage 'coarse' stopped by a signal at step 7.*resume"):
        runner.run("coarse", lambda d: _finished({"stopped_by_signal": True, "step": 7}))
    assert runner.finished("coarse") is None
    assert _finished({"stopped_by_signal": False, "eval": {}}) == {"stopped_by_signal": False, "eval": {}}


def test_grounding_baselines_random_object_above_random_box(shapes_tiny):
    """A guess that knows the objects (random true box) against one that does not (random box):
    the report gives both, and the chance one must be far lower and repeatable."""
    from fibervl.metrics.baselines import grounding_random_object, phrase_chance_random_box

    informed = grounding_random_object(shapes_tiny, "test")
    for source in ("grounding", "refexp"):
        chance = phrase_chance_random_box(shapes_tiny, "test", source)
        assert 0.0 <= chance < informed / 3, (source, chance, informed)
        assert phrase_chance_random_box(shapes_tiny, "test", source) == chance


def test_baselines_are_computed_on_the_evaluated_items(shapes_tiny):
    """A task evaluated on the first N records is compared with a baseline over those N records:
    over the whole split the values are the generator's baselines.json; over a prefix they are
    the hand-computed rates of that prefix."""
    from fibervl.data.shapes import ShapesDataset
    from fibervl.metrics.baselines import evaluated_baselines

    whole = json.loads((shapes_tiny / "baselines.json").read_text())["test"]
    assert evaluated_baselines(shapes_tiny, "test", "nlvr2") == whole["nlvr2"]
    assert evaluated_baselines(shapes_tiny, "test", "refexp") == whole["refexp"]
    assert evaluated_baselines(shapes_tiny, "test", "vqa")["all"] == whole["vqa"]["all"]

    refexp = list(ShapesDataset(shapes_tiny).refexp("test"))[:5]
    first5 = evaluated_baselines(shapes_tiny, "test", "refexp", limit=5)
    assert first5["expressions"] == 5
    assert first5["random_object"] == pytest.approx(100 * sum(1 / r.meta["num_objects"] for r in refexp) / 5, abs=0.01)
    nlvr2 = list(ShapesDataset(shapes_tiny).nlvr2("test"))[:3]
    first3 = evaluated_baselines(shapes_tiny, "test", "nlvr2", limit=3)
    assert first3["items"] == 3
    assert first3["true_fraction"] == pytest.approx(100 * sum(bool(s.label) for s in nlvr2) / 3, abs=0.01)
    with pytest.raises(ValueError, match="caption"):
        evaluated_baselines(shapes_tiny, "test", "caption")


def test_random_box_chance_is_certain_when_every_box_fills_its_image(tmp_path, monkeypatch):
    """Hand-made: one 32x32 image whose one phrase box is the whole image, training boxes
    32x32 too, so every random box is the phrase's box: chance 100 %."""
    from fibervl.metrics import baselines
    from fibervl.data.samples import Sample
    import torch

    class OneImage:
        def __init__(self, root):
            pass

        def grounding(self, split):
            return [Sample(sample_id="0", image_id=1, width=32, height=32, text="a red star",
                           boxes=torch.tensor([[0.0, 0.0, 32.0, 32.0]]), tokens_positive=[[(0, 10)]])]

    (tmp_path / "detection").mkdir()
    (tmp_path / "detection" / "instances_train.json").write_text(json.dumps(
        {"images": [], "annotations": [{"bbox": [0, 0, 32, 32]}]}))
    monkeypatch.setattr(baselines, "ShapesDataset", OneImage)
    assert baselines.phrase_chance_random_box(tmp_path, "test", "grounding", seeds=3) == 100.0


def test_a_task_stage_runs_after_the_stage_it_starts_from():
    import dataclasses

    from fibervl.mainjob.job import FAMILY_STAGES, JobContext, task_order
    from fibervl.mainjob.presets import get_job_preset

    preset = get_job_preset("default")
    family_tasks = FAMILY_STAGES["fiber"][1]
    assert preset.task("nlvr2").init_from == "retrieval"
    # asking for NLVR2 alone runs retrieval first; order is the family's, whatever the request's
    assert task_order(preset, "fiber", family_tasks, ["nlvr2"]) == ["retrieval", "nlvr2"]
    assert task_order(preset, "fiber", family_tasks, ["caption", "vqa"]) == ["vqa", "caption"]
    assert task_order(preset, "albef", FAMILY_STAGES["albef"][1], ["nlvr2"]) == ["retrieval", "nlvr2"]
    ctx = JobContext(preset, Path("/out"), Path("/out/data"), StageRunner(Path("/out")))
    assert ctx.task_init("nlvr2") == str(Path("/out/stages/retrieval/model"))
    assert ctx.task_init("vqa") == ctx.pretrained == str(Path("/out/stages/coarse/model"))
    with pytest.raises(ValueError, match="fiber family has no nlvr3"):
        task_order(preset, "fiber", family_tasks, ["nlvr3"])
    backwards = dataclasses.replace(preset, tasks={**preset.tasks, "retrieval": dataclasses.replace(
        preset.task("retrieval"), init_from="nlvr2")})
    with pytest.raises(ValueError, match="retrieval starts from 'nlvr2', which is not a task stage before it"):
        task_order(backwards, "fiber", family_tasks, ["retrieval"])


@pytest.mark.parametrize("family", ["fiber", "albef", "vlmo"])
@pytest.mark.parametrize("preset_name", ["quick", "default", "gpu-small"])
def test_every_stage_is_a_recipe_with_a_config_it_accepts(preset_name, family):
    """Each stage of the job is a recipe of the registry and a config that recipe loads
    strictly (no unknown key, every value of the right type), trained into the stage's own
    directory; a task starts from the model of the stage its plan names."""
    from fibervl.mainjob.job import EVAL_SPLIT, FAMILY_STAGES, TASK_STAGES, JobContext, pretrain_stages
    from fibervl.mainjob.presets import get_job_preset
    from fibervl.recipes.registry import recipes

    preset = get_job_preset(preset_name)
    ctx = JobContext(preset, Path("/out"), Path("/out/data"), StageRunner(Path("/out")), family=family)
    pretrain, tasks = pretrain_stages(preset, family), FAMILY_STAGES[family][1]
    known = recipes()
    for name, stage in [*pretrain.items(), *((t, TASK_STAGES[t]) for t in tasks)]:
        stage_dir = Path("/out/stages") / name
        cfg = stage.build(ctx, stage_dir)
        assert isinstance(cfg, known[stage.recipe].config_cls), name
        assert cfg.train.run_dir == str(stage_dir) and cfg.train.resume == "auto" and cfg.data.root == "/out/data"
        if name in tasks:
            assert cfg.data.eval_split == EVAL_SPLIT
    if family == "fiber":
        ground = TASK_STAGES["grounding"].build(ctx, Path("/g"))
        assert (ground.data.grounding, ground.data.refexp, ground.data.detection) == (True, False, False)
        assert ground.model.init == ctx.stage_model("fine")
        assert TASK_STAGES["vqa"].build(ctx, Path("/v")).model.init == ctx.task_init("vqa")


def test_a_stage_runs_its_recipe_and_keeps_its_record(monkeypatch, tmp_path):
    import dataclasses

    from fibervl.mainjob.job import PRETRAIN_STAGES, JobContext
    from fibervl.mainjob.presets import get_job_preset
    from fibervl.mainjob.stages import StageInterrupted
    from fibervl.recipes import registry

    ran = []
    table = registry.recipes()

    def run(cfg, **options):
        ran.append((cfg.train.run_dir, cfg.objectives.itm, options))
        return {"eval": {"i2t_r1": 50.0}, "stopped_by_signal": cfg.train.max_steps == 7}

    monkeypatch.setattr(registry, "recipes", lambda: {**table, "coarse": dataclasses.replace(table["coarse"], run=run)})
    ctx = JobContext(get_job_preset("quick"), tmp_path, tmp_path / "data", StageRunner(tmp_path))
    assert PRETRAIN_STAGES["coarse-itc"](ctx, tmp_path / "itc") == {"eval": {"i2t_r1": 50.0}}
    assert ran == [(str(tmp_path / "itc"), 0.0, {})]
    stopped = dataclasses.replace(ctx, preset=dataclasses.replace(
        ctx.preset, coarse=dataclasses.replace(ctx.preset.coarse, steps=7)))
    with pytest.raises(StageInterrupted, match="stopped by a signal"):
        PRETRAIN_STAGES["coarse"](stopped, tmp_path / "coarse")


@pytest.mark.parametrize("kind", ["grounding", "refexp"])
def test_grounding_and_refexp_evaluate_every_record_of_the_first_images(shapes_tiny, kind):
    """A preset's num_eval counts test images; the grounding and REC files hold several records
    an image, so their stages evaluate the records of the first num_eval images, not num_eval
    records (the first 300 grounding records are the captions of 60 images)."""
    import dataclasses
    from types import SimpleNamespace

    from fibervl.data.shapes import ShapesDataset
    from fibervl.mainjob.job import records_of_first_images
    from fibervl.mainjob.presets import PRESETS

    records = list(getattr(ShapesDataset(shapes_tiny), kind)("test"))
    images = list(dict.fromkeys(s.image_path for s in records))
    preset = PRESETS["quick"]()

    def limit(num_eval):
        ctx = SimpleNamespace(preset=dataclasses.replace(preset, num_eval=num_eval), data_root=shapes_tiny)
        return records_of_first_images(ctx, kind)

    first = limit(3)
    assert first >= 3 and {s.image_path for s in records[:first]} == set(images[:3])
    assert limit(len(images)) == limit(0) == 0  # every record

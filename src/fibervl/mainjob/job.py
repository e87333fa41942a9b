"""The main job: data -> coarse pre-training -> fine-grained pre-training -> seven tasks -> report.

Every stage is an existing recipe (``fibervl pretrain coarse``, ``fibervl finetune vqa``, ...)
configured from the preset; this module only chains them and collects one result per task:

    {"metric": "accuracy (VQAv2 metric, %)", "value": 61.2,
     "baseline": "text-only prior", "baseline_value": 42.0, "split": "test", ...details}

Layout of ``OUT``: ``data/`` (unless ``--data DIR``), ``stages/<stage>/`` (each a recipe run
directory with ``model/``, ``metrics.jsonl`` and ``stage.json``), ``results.json``, ``report.md``,
``report.html`` and ``figures/``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..engine.optim import OptimConfig, ScheduleConfig
from ..engine.trainer import TrainConfig
from .baselines import detection_chance_ap, grounding_random_object, shapes_baselines
from .presets import JobPreset, StagePlan
from .stages import StageRunner

EVAL_SPLIT = "test"  # the report's numbers: the held-out split no stage trains or selects on


@dataclass
class JobContext:
    preset: JobPreset
    out: Path
    data_root: Path
    runner: StageRunner
    echo: Callable[[str], None] = print

    def stage_model(self, stage: str) -> str:
        return str(self.runner.stage_dir(stage) / "model")


def train_config(plan: StagePlan, run_dir: Path, preset: JobPreset, lr_multipliers: dict | None = None) -> TrainConfig:
    """The engine settings of one stage: linear warm-up then the plan's schedule, gradient
    clipping, a checkpoint half way and at the end (an interrupted stage resumes from it)."""
    return TrainConfig(
        run_dir=str(run_dir), max_steps=plan.steps, batch_size=plan.batch_size, precision=plan.precision,
        device=preset.device, num_workers=preset.workers, clip_grad_norm=1.0, log_every=max(1, min(25, plan.steps // 4)),
        ckpt_every=max(1, plan.steps // 2), keep_last=1, eval_every=None, progress_bar=False,
        optim=OptimConfig(lr=plan.lr, weight_decay=0.01, lr_multipliers=dict(lr_multipliers or {})),
        schedule=ScheduleConfig(name=plan.schedule, warmup=float(min(plan.warmup, plan.steps))),
    )


def _resumable(cfg: TrainConfig) -> TrainConfig:
    """A stage interrupted after a checkpoint continues from it (the engine's ``resume=auto``)."""
    return dataclasses.replace(cfg, resume="auto")


# ---- stages ------------------------------------------------------------------------------

def stage_data(ctx: JobContext, stage_dir: Path) -> dict:
    from ..data.shapes import ShapesConfig, generate

    plan = ctx.preset.data
    low, _, high = plan.objects.partition("-")
    cfg = ShapesConfig(size=plan.size, seed=plan.seed, image_size=plan.image_size, min_objects=int(low),
                       max_objects=int(high or low), backgrounds=tuple(plan.backgrounds.split(",")), webdataset=False)
    meta = generate(ctx.data_root, cfg, progress=False)
    return {"root": str(ctx.data_root), "splits": meta["splits"], "seconds": meta["generation_seconds"]}


def stage_coarse_itc(ctx: JobContext, stage_dir: Path) -> dict:
    """ITC alone first: the dual encoder learns to align before the fused objectives start."""
    from ..recipes.coarse_pretrain import CaptionData, CoarseConfig, run
    from ..experiment import ModelSpec
    from ..tasks.pretrain_coarse import CoarseObjectives

    p = ctx.preset
    plan = dataclasses.replace(p.coarse, steps=p.itc_steps, schedule="constant")
    cfg = CoarseConfig(model=ModelSpec(preset=p.model), data=CaptionData(root=str(ctx.data_root), num_eval=p.num_eval),
                       objectives=CoarseObjectives(itm=0.0, mlm=0.0), train=_resumable(train_config(plan, stage_dir, p)))
    return {"eval": run(cfg)["eval"]}


def stage_coarse(ctx: JobContext, stage_dir: Path) -> dict:
    from ..recipes.coarse_pretrain import CaptionData, CoarseConfig, run
    from ..experiment import ModelSpec
    from ..tasks.pretrain_coarse import CoarseObjectives

    p = ctx.preset
    init = ctx.stage_model("coarse-itc") if p.itc_steps else ""
    cfg = CoarseConfig(model=ModelSpec(preset=p.model, init=init),
                       data=CaptionData(root=str(ctx.data_root), num_eval=p.num_eval),
                       objectives=CoarseObjectives(), train=_resumable(train_config(p.coarse, stage_dir, p)))
    return {"eval": run(cfg)["eval"]}


def stage_fine(ctx: JobContext, stage_dir: Path) -> dict:
    from ..experiment import ModelSpec
    from ..recipes.fine_pretrain import FineConfig, FineData, run

    p = ctx.preset
    cfg = FineConfig(model=ModelSpec(preset=p.fine_model, init=ctx.stage_model("coarse")),
                     data=FineData(root=str(ctx.data_root), num_eval=p.num_eval, eval_split=EVAL_SPLIT),
                     train=_resumable(train_config(p.fine, stage_dir, p, {"detector.": 3.0})))
    summary = run(cfg, eval_which=())
    return {"init_new": len(summary["init_report"]["new"]), "init_unused": len(summary["init_report"]["unused"])}


# ---- tasks -------------------------------------------------------------------------------

def task_retrieval(ctx: JobContext, stage_dir: Path) -> dict:
    from ..experiment import ModelSpec
    from ..recipes.coarse_pretrain import CaptionData
    from ..recipes.retrieval import RetrievalConfig, RetrievalEval, run

    p = ctx.preset
    cfg = RetrievalConfig(model=ModelSpec(init=ctx.stage_model("coarse")),
                          data=CaptionData(root=str(ctx.data_root), num_eval=p.num_eval, eval_split=EVAL_SPLIT),
                          eval=RetrievalEval(rerank_k=16),
                          train=_resumable(train_config(p.task("retrieval"), stage_dir, p)))
    m = run(cfg)["eval"]
    value = (m["rerank_i2t_r1"] + m["rerank_t2i_r1"]) / 2
    chance = (100.0 * 5 / m["texts"] + 100.0 / m["images"]) / 2  # 5 captions per image: i2t hits any of them
    return {"metric": "R@1, mean of image->text and text->image (ITC top-16 re-ranked by ITM, %)",
            "value": value, "baseline": "chance (random ranking)", "baseline_value": chance, "details": m}


def task_vqa(ctx: JobContext, stage_dir: Path) -> dict:
    from ..experiment import ModelSpec
    from ..recipes.vqa import VqaConfig, VqaData, run

    p = ctx.preset
    cfg = VqaConfig(model=ModelSpec(init=ctx.stage_model("coarse")),
                    data=VqaData(root=str(ctx.data_root), num_eval=p.num_eval * 6, eval_split=EVAL_SPLIT),
                    train=_resumable(train_config(p.task("vqa"), stage_dir, p, {"heads.": 10.0})))
    m = run(cfg)["eval"]
    b = shapes_baselines(ctx.data_root, EVAL_SPLIT)["vqa"]["all"]
    prior = max(b["text_only_prior"], b["prefix_prior"])
    return {"metric": "accuracy (VQAv2 metric, %)", "value": m["vqa_acc"],
            "baseline": "text-only prior (best answer per question text / prefix, from train)",
            "baseline_value": prior, "details": m}


def task_nlvr2(ctx: JobContext, stage_dir: Path) -> dict:
    from ..experiment import ModelSpec
    from ..recipes.nlvr2 import Nlvr2Config, Nlvr2Data, run

    p = ctx.preset
    cfg = Nlvr2Config(model=ModelSpec(init=ctx.stage_model("coarse")),
                      data=Nlvr2Data(root=str(ctx.data_root), num_eval=p.num_eval, eval_split=EVAL_SPLIT),
                      train=_resumable(train_config(p.task("nlvr2"), stage_dir, p, {"heads.": 10.0})))
    m = run(cfg)["eval"]
    b = shapes_baselines(ctx.data_root, EVAL_SPLIT)["nlvr2"]
    best = max(b["chance"], b["majority"], b["prefix_prior"], b["text_only_prior"])
    return {"metric": "accuracy (%)", "value": m["nlvr2_acc"],
            "baseline": "best of chance, majority and text-only priors", "baseline_value": best, "details": m}


def task_caption(ctx: JobContext, stage_dir: Path) -> dict:
    from ..experiment import ModelSpec
    from ..recipes.caption import CaptionConfig, run
    from ..recipes.coarse_pretrain import CaptionData, caption_reader
    from ..tasks.caption import CaptionSettings, most_frequent_caption_baseline

    p = ctx.preset
    data = CaptionData(root=str(ctx.data_root), num_eval=p.num_eval, eval_split=EVAL_SPLIT)
    cfg = CaptionConfig(model=ModelSpec(init=ctx.stage_model("coarse")), data=data,
                        caption=CaptionSettings(beam_size=3, spice=False),
                        train=_resumable(train_config(p.task("caption"), stage_dir, p)))
    m = run(cfg)["eval"]
    base = most_frequent_caption_baseline(caption_reader(data, "train"), caption_reader(data, EVAL_SPLIT), limit=p.num_eval)
    return {"metric": "CIDEr (beam 3)", "value": m["cider"],
            "baseline": f"the most frequent training caption for every image (\"{base['caption']}\")",
            "baseline_value": base["cider"], "details": {k: v for k, v in m.items() if isinstance(v, (int, float))}}


def _fine_task(ctx: JobContext, stage_dir: Path, source: str, evals: tuple[str, ...]) -> dict:
    from ..experiment import ModelSpec
    from ..recipes.fine_pretrain import FineConfig, FineData, run

    p = ctx.preset
    switches = {s: s == source for s in ("grounding", "refexp", "detection")}
    cfg = FineConfig(model=ModelSpec(preset=p.fine_model, init=ctx.stage_model("fine")),
                     data=FineData(root=str(ctx.data_root), num_eval=p.num_eval, eval_split=EVAL_SPLIT, **switches),
                     train=_resumable(train_config(p.task(source), stage_dir, p, {"detector.": 3.0})))
    return run(cfg, eval_which=evals)["eval"]


def task_grounding(ctx: JobContext, stage_dir: Path) -> dict:
    m = _fine_task(ctx, stage_dir, "grounding", ("grounding",))
    base = grounding_random_object(ctx.data_root, EVAL_SPLIT, ctx.preset.num_eval)
    return {"metric": "phrase grounding R@1 (IoU >= 0.5, %)", "value": m["ground_r1"],
            "baseline": "a random object of the image", "baseline_value": base, "details": m}


def task_refexp(ctx: JobContext, stage_dir: Path) -> dict:
    m = _fine_task(ctx, stage_dir, "refexp", ("refexp",))
    base = shapes_baselines(ctx.data_root, EVAL_SPLIT)["refexp"]["random_object"]
    return {"metric": "accuracy (top box IoU >= 0.5, %)", "value": m["rec_acc"],
            "baseline": "a random object of the image", "baseline_value": base, "details": m}


def task_detection(ctx: JobContext, stage_dir: Path) -> dict:
    from ..data.shapes import ShapesDataset

    m = _fine_task(ctx, stage_dir, "detection", ("detection", "zero_shot"))
    shapes = ShapesDataset(ctx.data_root)
    seen = detection_chance_ap(ctx.data_root, EVAL_SPLIT, shapes.seen_category_ids, ctx.preset.num_eval)
    unseen = detection_chance_ap(ctx.data_root, EVAL_SPLIT, shapes.held_out_category_ids, ctx.preset.num_eval)
    return {
        "detection": {"metric": "COCO AP, seen classes (%)", "value": m["det_AP"],
                      "baseline": "chance (random boxes and classes)", "baseline_value": seen,
                      "details": {k: v for k, v in m.items() if k.startswith("det_")}},
        "detection_zero_shot": {"metric": "COCO AP, held-out classes never trained on (%)", "value": m["zs_AP"],
                                "baseline": "chance (random boxes and classes)", "baseline_value": unseen,
                                "details": {k: v for k, v in m.items() if k.startswith("zs_")}},
    }


TASK_STAGES: dict[str, Callable[[JobContext, Path], dict]] = {
    "retrieval": task_retrieval, "vqa": task_vqa, "nlvr2": task_nlvr2, "caption": task_caption,
    "grounding": task_grounding, "refexp": task_refexp, "detection": task_detection,
}
PRETRAIN_STAGES: dict[str, Callable[[JobContext, Path], dict]] = {
    "coarse-itc": stage_coarse_itc, "coarse": stage_coarse, "fine": stage_fine,
}


def run_job(preset: JobPreset, out: Path, data_root: Path | None = None, redo: set[str] | None = None,
            tasks: tuple[str, ...] | None = None, echo: Callable[[str], None] = print) -> dict:
    """Run (or continue) the whole job; returns the results dict also written to results.json."""
    from .report import write_report

    out.mkdir(parents=True, exist_ok=True)
    runner = StageRunner(out, redo, echo)
    ctx = JobContext(preset, out, Path(data_root) if data_root else out / "data", runner, echo)
    start = time.perf_counter()
    if data_root is None or not (Path(data_root) / "dataset.json").is_file():
        runner.run("data", lambda d: stage_data(ctx, d))
    for name, fn in PRETRAIN_STAGES.items():
        if name == "coarse-itc" and not preset.itc_steps:
            continue
        runner.run(name, lambda d, fn=fn: fn(ctx, d))
    results: dict[str, dict] = {}
    for name in tasks or tuple(TASK_STAGES):
        r = runner.run(name, lambda d, name=name: TASK_STAGES[name](ctx, d))
        results.update(r if name == "detection" else {name: r})
    summary = {"preset": preset.name, "data": str(ctx.data_root), "tasks": results, "stages": runner.seconds(),
               "total_seconds": round(time.perf_counter() - start, 1)}
    write_report(ctx, summary)
    return summary

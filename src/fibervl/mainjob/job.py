"""The main job: data -> coarse pre-training -> fine-grained pre-training -> seven tasks -> report.

Every stage is a :class:`RecipeStage`: an existing recipe (``fibervl pretrain coarse``,
``fibervl finetune vqa``, ...), the config keys the preset gives it over the recipe's defaults,
and the record kept of its run; this module only chains them and collects one result per task:

    {"metric": "accuracy (VQAv2 metric, %)", "value": 61.2,
     "baseline": "text-only prior", "baseline_value": 42.0, "split": "test", ...details}

Layout of ``OUT``: ``data/`` (unless ``--data DIR``), ``stages/<stage>/`` (each a recipe run
directory with ``model/``, ``metrics.jsonl`` and ``stage.json``), ``results.json``, ``report.md``,
``report.html`` and ``figures/``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..engine.config import to_dict
from ..engine.optim import OptimConfig, ScheduleConfig
from ..engine.trainer import TrainConfig
from ..metrics.baselines import detection_chance_ap, evaluated_baselines, grounding_random_object, phrase_chance_random_box
from .presets import JobPreset, StagePlan
from .stages import StageInterrupted, StageRunner

EVAL_SPLIT = "test"  # the report's numbers: the held-out split no stage trains or selects on
VAL_SPLIT = "val"  # where a stage may choose a setting of its own (the re-ranking weight)
# Learning-rate multipliers, keyed by the parameter groups each model names
# (``parameter_groups()``, docs/models.md). The stage that trains the fused FIBER model: its heads
# and its fusion (both directions of cross-attention, the cross-modal projections and poolers)
# at the official 5x. The backbones start from scratch here, not from pre-trained unimodal
# weights, so the gates (``alpha``, 0 at start; inside ``fusion``) get a much larger rate: at lr
# 3e-4 they would need ~1000s of steps to open.
FUSED_MULTIPLIERS = {"heads": 5.0, "fusion": 5.0, "gates": 20.0}
# ALBEF's and VLMo's pre-training: the heads at 5x, and ALBEF's cross-attention to the image
# (not the LayerNorm after it).
ALBEF_PRETRAIN_MULTIPLIERS = {"heads": 5.0, "cross_attention": 5.0}
VLMO_PRETRAIN_MULTIPLIERS = {"heads": 5.0}
# The fine-grained stages: the detection head and FPN, new on the coarse model, learn 3x faster.
FINE_MULTIPLIERS = {"detector": 3.0}
# Fine-tuning the pre-trained model on a task (retrieval, VQA, NLVR2, captioning): the presets give these
# stages a low rate (3e-5) that the pre-trained backbones and fusion keep, while the new head and
# what lies between the fused features and it learn 33x faster (1e-3): FIBER's cross_modal
# projections and poolers, VLMo's poolers (ALBEF's heads read the fused states directly). With
# the pre-training rates instead, the freshly initialised head's first large gradients wreck the
# fused features and the task model falls back to the text prior (measured on VQA, 300 steps:
# 44.1 against 52.7; see docs/results.md). The captioner also moves its text-to-image attention
# fast: it is the only path from the image to a causal text that pre-training never ran.
FINETUNE_MULTIPLIERS = {"fiber": {"heads": 33.0, "cross_modal": 33.0}, "albef": {"heads": 33.0},
                        "vlmo": {"heads": 33.0, "poolers": 33.0}}
CAPTION_MULTIPLIERS = {**FINETUNE_MULTIPLIERS["fiber"], "text_to_image": 33.0}


@dataclass
class JobContext:
    preset: JobPreset
    out: Path
    data_root: Path
    runner: StageRunner
    echo: Callable[[str], None] = print
    family: str = "fiber"

    def stage_model(self, stage: str) -> str:
        return str(self.runner.stage_dir(stage) / "model")

    def freezes_prefix(self, task: str) -> bool:
        """Whether ``task`` trains only the fused top: the plan's ``freeze_prefix``, for FIBER
        (ALBEF and VLMo fine-tune every weight, as their papers do)."""
        return self.preset.task(task).freeze_prefix and self.family == "fiber"

    def caches_prefix(self, task: str) -> bool:
        """Whether ``task`` trains on cached image prefixes: the plan's ``cache_prefix``, for FIBER
        (the recipe refuses it without ``freeze_prefix``)."""
        return self.preset.task(task).cache_prefix and self.family == "fiber"

    @property
    def pretrained(self) -> str:
        """The image-text pre-trained model the coarse-grained tasks start from."""
        return self.stage_model("coarse" if self.family == "fiber" else "pretrain")

    def task_init(self, task: str) -> str:
        """The model ``task`` starts from: the model of the task stage its plan's ``init_from``
        names, else :attr:`pretrained`."""
        source = self.preset.task(task).init_from
        return self.stage_model(source) if source else self.pretrained


def train_config(plan: StagePlan, run_dir: Path, preset: JobPreset, lr_multipliers: dict | None = None) -> TrainConfig:
    """The engine settings of one stage: linear warm-up then the plan's schedule, gradient
    clipping, a checkpoint half way and at the end; ``resume=auto``: a stage interrupted after
    a checkpoint continues from it."""
    return TrainConfig(
        run_dir=str(run_dir), max_steps=plan.steps, batch_size=plan.batch_size, precision=plan.precision,
        device=preset.device, num_workers=preset.workers, clip_grad_norm=1.0, log_every=max(1, min(25, plan.steps // 4)),
        ckpt_every=max(1, plan.steps // 2), keep_last=1, eval_every=None, progress_bar=False, resume="auto",
        optim=OptimConfig(lr=plan.lr, weight_decay=0.01, lr_multipliers=dict(lr_multipliers or {})),
        schedule=ScheduleConfig(name=plan.schedule, warmup=float(min(plan.warmup, max(1, plan.steps // 5)))),
    )


def _finished(summary: dict) -> dict:
    """A recipe's summary, unless its training (or that of one of its own stages) was stopped by
    a signal (SIGINT / SIGTERM): then the stage is not finished, and the job stops so that a
    re-run resumes it from its checkpoint."""
    for part in (summary, *summary.get("stages", {}).values()):
        if part.get("stopped_by_signal"):
            raise StageInterrupted(f"stopped by a signal at step {part.get('step')}")
    return summary


def _metrics(ctx: JobContext, stage_dir: Path, cfg, summary: dict) -> dict:
    """The record a pre-training stage keeps: its final metrics."""
    return {"eval": summary["eval"]}


@dataclass(frozen=True)
class RecipeStage:
    """A stage of the job as data: a recipe (its name in :func:`fibervl.recipes.registry.recipes`),
    the config the preset gives it over the recipe's defaults (``config(ctx, stage_dir)``: config
    keys as a ``--config`` file holds them), and the record the job keeps of the run
    (``record(ctx, stage_dir, cfg, summary)``: a task's result row). Calling it runs the recipe
    as its command would; ``run_options`` are keyword arguments of the recipe's ``run``
    beyond the config (the fine-grained pre-training's ``eval_which``)."""

    recipe: str
    config: Callable[[JobContext, Path], dict]
    record: Callable[[JobContext, Path, object, dict], dict] = _metrics
    run_options: tuple[tuple[str, object], ...] = ()

    def build(self, ctx: JobContext, stage_dir: Path):
        """The recipe's config for this stage, checked strictly as a config file would be."""
        from ..engine.config import from_dict
        from ..recipes.registry import get_recipe

        return from_dict(get_recipe(self.recipe).config_cls, self.config(ctx, stage_dir))

    def __call__(self, ctx: JobContext, stage_dir: Path) -> dict:
        from ..recipes.registry import get_recipe

        cfg = self.build(ctx, stage_dir)
        summary = _finished(get_recipe(self.recipe).run(cfg, **dict(self.run_options)))
        return self.record(ctx, stage_dir, cfg, summary)


def _train(plan: StagePlan, stage_dir: Path, preset: JobPreset, lr_multipliers: dict | None = None) -> dict:
    """The ``train`` section of a stage's config: :func:`train_config` as config keys."""
    return to_dict(train_config(plan, stage_dir, preset, lr_multipliers))


def _data(ctx: JobContext, **keys) -> dict:
    """The ``data`` section of a stage's config: the job's data set, the preset's evaluation size."""
    return {"root": str(ctx.data_root), "num_eval": ctx.preset.num_eval, **keys}


# ---- stages ------------------------------------------------------------------------------

def stage_data(ctx: JobContext, stage_dir: Path) -> dict:
    from ..data.shapes import ShapesConfig, generate

    plan = ctx.preset.data
    low, _, high = plan.objects.partition("-")
    cfg = ShapesConfig(size=plan.size, seed=plan.seed, image_size=plan.image_size, min_objects=int(low),
                       max_objects=int(high or low), backgrounds=tuple(plan.backgrounds.split(",")),
                       nlvr2_per_image=plan.nlvr2_per_image, webdataset=False)
    meta = generate(ctx.data_root, cfg, progress=False)
    return {"root": str(ctx.data_root), "splits": meta["splits"], "seconds": meta["generation_seconds"]}


def image_config(ctx: JobContext, stage_dir: Path) -> dict:
    """The image tower alone, supervised by the colours, shapes and sizes it is shown
    (``preset.image_label_kinds``): with
    ``preset.fresh_image_scenes`` a freshly rendered scene of 1 to ``preset.image_scene_objects``
    objects at every draw (its tokens labelled too with ``preset.image_token_weight``), else the
    training images. The fit it reports is on the first ``num_eval`` training images."""
    p = ctx.preset
    fresh = {"fresh_scenes": p.image.steps * p.image.batch_size, "fresh_objects": p.image_scene_objects,
             "token_weight": p.image_token_weight} if p.fresh_image_scenes else {}
    return {"model": {"preset": p.model}, "data": _data(ctx, label_kinds=list(p.image_label_kinds), **fresh),
            "train": _train(p.image, stage_dir, p)}


def _image_model(ctx: JobContext) -> dict:
    """The ``model`` keys that start a coarse stage from the image stage's model, when it runs."""
    return {"init": ctx.stage_model("image")} if ctx.preset.image.steps else {}


def coarse_itc_config(ctx: JobContext, stage_dir: Path) -> dict:
    """ITC alone first: the dual encoder learns to align before the fused objectives start."""
    p = ctx.preset
    plan = dataclasses.replace(p.coarse, steps=p.itc_steps, schedule="constant")
    return {"model": {"preset": p.model, **_image_model(ctx)}, "data": _data(ctx),
            "objectives": {"itm": 0.0, "mlm": 0.0}, "train": _train(plan, stage_dir, p)}


def coarse_config(ctx: JobContext, stage_dir: Path) -> dict:
    p = ctx.preset
    init = ctx.stage_model("coarse-itc") if p.itc_steps else _image_model(ctx).get("init", "")
    return {"model": {"preset": p.model, "init": init}, "data": _data(ctx),
            "train": _train(p.coarse, stage_dir, p, FUSED_MULTIPLIERS)}


def _fine_config(ctx: JobContext, stage_dir: Path, init_stage: str, plan: StagePlan, **sources: bool) -> dict:
    """The fine-grained recipe's config for a stage of the job: the preset's fine model from the
    model of ``init_stage``, trained by ``plan`` (detector 3x) with the preset's word-region
    weight; ``sources`` switches training sources off (default: grounding, refexp, detection)."""
    p = ctx.preset
    return {"model": {"preset": p.fine_model, "init": ctx.stage_model(init_stage)},
            "data": _data(ctx, eval_split=EVAL_SPLIT, **sources),
            "objectives": {"token_align": p.token_align}, "train": _train(plan, stage_dir, p, FINE_MULTIPLIERS)}


def fine_config(ctx: JobContext, stage_dir: Path) -> dict:
    return _fine_config(ctx, stage_dir, "coarse", ctx.preset.fine)


def fine_record(ctx: JobContext, stage_dir: Path, cfg, summary: dict) -> dict:
    return {"init_new": len(summary["init_report"]["new"]), "init_unused": len(summary["init_report"]["unused"])}


def albef_pretrain_config(ctx: JobContext, stage_dir: Path) -> dict:
    """ALBEF: ITC (momentum distillation, queue) + ITM + MLM for as many steps as FIBER's two
    coarse stages together, so that the comparison is at matched image-text steps."""
    p = ctx.preset
    plan = dataclasses.replace(p.coarse, steps=p.itc_steps + p.coarse.steps)
    return {"model": {"preset": p.family_models["albef"]}, "data": _data(ctx),
            "objectives": {"queue_size": 1024, "alpha_warmup_steps": max(1, plan.steps // 3)},
            "train": _train(plan, stage_dir, p, ALBEF_PRETRAIN_MULTIPLIERS)}


def vlmo_pretrain_config(ctx: JobContext, stage_dir: Path) -> dict:
    """VLMo's three stages: image-only MIM, text-only MLM (attention and vision experts frozen),
    then ITC + ITM + MLM for as many steps as FIBER's two coarse stages together."""
    p = ctx.preset
    unimodal = max(1, p.itc_steps // 2)
    return {"model": {"preset": p.family_models["vlmo"]}, "data": _data(ctx),
            "stages": {"mim_steps": unimodal, "text_steps": unimodal, "vl_steps": p.itc_steps + p.coarse.steps},
            "train": _train(p.coarse, stage_dir, p, VLMO_PRETRAIN_MULTIPLIERS)}


# ---- tasks -------------------------------------------------------------------------------

def _task_model(ctx: JobContext, task: str) -> dict:
    """The ``model`` section of a coarse-grained task stage: its init model, with the prefix
    frozen where the plan asks for it."""
    return {"init": ctx.task_init(task), "freeze_prefix": ctx.freezes_prefix(task)}


def retrieval_config(ctx: JobContext, stage_dir: Path) -> dict:
    p = ctx.preset
    return {"model": _task_model(ctx, "retrieval"),
            "data": _data(ctx, eval_split=EVAL_SPLIT, cache_image_prefix=ctx.caches_prefix("retrieval")),
            "eval": {"rerank_k": 8, "itm_weight_split": VAL_SPLIT},
            "train": _train(p.task("retrieval"), stage_dir, p, FINETUNE_MULTIPLIERS[ctx.family])}


def retrieval_record(ctx: JobContext, stage_dir: Path, cfg, summary: dict) -> dict:
    from ..metrics.baselines import chance_recall

    m = summary["eval"]
    value = (m["rerank_i2t_r1"] + m["rerank_t2i_r1"]) / 2
    c = chance_recall(int(m["images"]), int(m["texts"]), m["texts"] / m["images"])
    chance = (c["i2t_r1"] + c["t2i_r1"]) / 2
    return {"metric": f"R@1, mean of image->text and text->image (ITC top-8 re-ranked by ITC + "
                      f"{m['rerank_itm_weight']:g} x ITM, the weight chosen on {VAL_SPLIT}; %)",
            "value": value, "baseline": "chance (random ranking)", "baseline_value": chance, "details": m}


def vqa_config(ctx: JobContext, stage_dir: Path) -> dict:
    p = ctx.preset
    return {"model": _task_model(ctx, "vqa"),
            "data": _data(ctx, num_eval=p.num_eval * 6, eval_split=EVAL_SPLIT, cache_image_prefix=ctx.caches_prefix("vqa")),
            "train": _train(p.task("vqa"), stage_dir, p, FINETUNE_MULTIPLIERS[ctx.family])}


def vqa_record(ctx: JobContext, stage_dir: Path, cfg, summary: dict) -> dict:
    m = summary["eval"]
    b = evaluated_baselines(ctx.data_root, EVAL_SPLIT, "vqa", cfg.data.num_eval)["all"]
    prior = max(b["text_only_prior"], b["prefix_prior"])
    parts = [(kind, m.get(f"vqa_acc_{key}")) for kind, key in (("yes/no", "yes_no"), ("number", "number"), ("other", "other"))]
    return {"metric": "accuracy (VQAv2 metric, %)", "value": m["vqa_acc"],
            "baseline": "text-only prior (best answer per question text / prefix, from train)",
            "baseline_value": prior, "details": m,
            "breakdown": ", ".join(f"{kind} {v:.2f}" for kind, v in parts if v is not None)}


def nlvr2_config(ctx: JobContext, stage_dir: Path) -> dict:
    p = ctx.preset
    # num_eval counts images; NLVR2 has nlvr2_per_image statements per image (VQA: 6 questions)
    return {"model": _task_model(ctx, "nlvr2"),
            "data": _data(ctx, num_eval=int(p.num_eval * p.data.nlvr2_per_image), eval_split=EVAL_SPLIT,
                          cache_image_prefix=ctx.caches_prefix("nlvr2")),
            "train": _train(p.task("nlvr2"), stage_dir, p, FINETUNE_MULTIPLIERS[ctx.family])}


def nlvr2_record(ctx: JobContext, stage_dir: Path, cfg, summary: dict) -> dict:
    m = summary["eval"]
    b = evaluated_baselines(ctx.data_root, EVAL_SPLIT, "nlvr2", cfg.data.num_eval)
    best = max(b["chance"], b["majority"], b["prefix_prior"], b["text_only_prior"])
    return {"metric": "accuracy (%)", "value": m["nlvr2_acc"],
            "baseline": "best of chance, majority and text-only priors", "baseline_value": best, "details": m}


def caption_config(ctx: JobContext, stage_dir: Path) -> dict:
    p = ctx.preset
    return {"model": _task_model(ctx, "caption"),
            "data": _data(ctx, eval_split=EVAL_SPLIT, cache_image_prefix=ctx.caches_prefix("caption")),
            "caption": {"beam_size": 3, "spice": False},
            "train": _train(p.task("caption"), stage_dir, p, CAPTION_MULTIPLIERS)}


def caption_record(ctx: JobContext, stage_dir: Path, cfg, summary: dict) -> dict:
    from ..metrics.baselines import best_constant_caption_baseline
    from ..recipes.image_text import caption_reader

    m = summary["eval"]
    base = best_constant_caption_baseline(caption_reader(cfg.data, "train"), caption_reader(cfg.data, EVAL_SPLIT),
                                          limit=ctx.preset.num_eval)
    predictions = json.loads((stage_dir / f"predictions_{EVAL_SPLIT}.json").read_text(encoding="utf-8"))
    return {"metric": "CIDEr (beam 3)", "value": m["cider"],
            "baseline": f"the best single training caption given for every image (\"{base['caption']}\")",
            "baseline_value": base["cider"],
            "details": {**{k: v for k, v in m.items() if isinstance(v, (int, float))},
                        "distinct_captions": len({x["caption"] for x in predictions})}}


def _fine_task_config(source: str) -> Callable[[JobContext, Path], dict]:
    """The config of the fine-grained task stage that trains on ``source`` data alone."""
    def config(ctx: JobContext, stage_dir: Path) -> dict:
        switches = {s: s == source for s in ("grounding", "refexp", "detection")}
        cfg = _fine_config(ctx, stage_dir, "fine", ctx.preset.task(source), **switches)
        if source != "detection":  # a detection record is an image; the others have several
            cfg["data"]["num_eval"] = records_of_first_images(ctx, source)
        return cfg
    return config


def records_of_first_images(ctx: JobContext, kind: str) -> int:
    """The records of the first ``num_eval`` test images in the ``kind`` ("grounding" or
    "refexp") file, which holds several records an image (5 captions; 1-3 expressions) and whose
    evaluation and baselines count records: the first this many (0: all). Before the data stage
    has written the data set (a config built to be checked, never run) it is ``num_eval``."""
    from ..data.shapes import ShapesDataset

    if not ctx.preset.num_eval:
        return 0
    if not (ctx.data_root / "dataset.json").is_file():
        return ctx.preset.num_eval
    images = set()
    for count, sample in enumerate(getattr(ShapesDataset(ctx.data_root), kind)(EVAL_SPLIT)):
        images.add(sample.image_path)
        if len(images) > ctx.preset.num_eval:
            return count
    return 0  # the split has no more images than num_eval: every record


def grounding_record(ctx: JobContext, stage_dir: Path, cfg, summary: dict) -> dict:
    m = summary["eval"]
    limit = cfg.data.num_eval  # the stage's: records_of_first_images
    base = grounding_random_object(ctx.data_root, EVAL_SPLIT, limit)
    chance = phrase_chance_random_box(ctx.data_root, EVAL_SPLIT, "grounding", limit)
    return {"metric": "phrase grounding R@1 (IoU >= 0.5, %)", "value": m["ground_r1"],
            "baseline": f"a random object of the image (a random box: {chance:.2f})", "baseline_value": base,
            "details": {**m, "chance_random_box": chance}}


def refexp_record(ctx: JobContext, stage_dir: Path, cfg, summary: dict) -> dict:
    m = summary["eval"]
    limit = cfg.data.num_eval  # the stage's: records_of_first_images
    base = evaluated_baselines(ctx.data_root, EVAL_SPLIT, "refexp", limit)["random_object"]
    chance = phrase_chance_random_box(ctx.data_root, EVAL_SPLIT, "refexp", limit)
    groups = (("expressions naming a seen shape or none", "seen"), ("naming a shape held out of training", "held_out"))
    return {"metric": "accuracy (top box IoU >= 0.5, %)", "value": m["rec_acc"],
            "baseline": f"a random object of the image (a random box: {chance:.2f})", "baseline_value": base,
            "details": {**m, "chance_random_box": chance},
            "breakdown": ", ".join(f"{what} {m[f'rec_acc_{g}']:.2f} ({m[f'rec_expressions_{g}']:.0f})"
                                   for what, g in groups if f"rec_acc_{g}" in m)}


def detection_record(ctx: JobContext, stage_dir: Path, cfg, summary: dict) -> dict:
    from ..data.shapes import ShapesDataset

    m = summary["eval"]
    shapes = ShapesDataset(ctx.data_root)
    seen = detection_chance_ap(ctx.data_root, EVAL_SPLIT, shapes.seen_category_ids, ctx.preset.num_eval)
    unseen = detection_chance_ap(ctx.data_root, EVAL_SPLIT, shapes.held_out_category_ids, ctx.preset.num_eval)
    return {
        "detection": {"metric": "COCO AP, seen classes (%)", "value": m["det_AP"],
                      "baseline": "chance (random boxes and classes)", "baseline_value": seen,
                      "details": {k: v for k, v in m.items() if k.startswith("det_")}},
        "detection_zero_shot": {"metric": "COCO AP, held-out classes never trained on, every class named (%)", "value": m["zs_AP"],
                                "baseline": "chance (random boxes and classes)", "baseline_value": unseen,
                                "details": {k: v for k, v in m.items() if k.startswith("zs_")}},
    }


# The task stages: the recipe each runs, its config from the preset, the result row it reports.
# The fine-grained ones run the recipes ground / refexp / detect, which train the fine-grained
# model on one kind of data and evaluate that task alone.
TASK_STAGES: dict[str, RecipeStage] = {
    "retrieval": RecipeStage("retrieval", retrieval_config, retrieval_record),
    "vqa": RecipeStage("vqa", vqa_config, vqa_record),
    "nlvr2": RecipeStage("nlvr2", nlvr2_config, nlvr2_record),
    "caption": RecipeStage("caption", caption_config, caption_record),
    "grounding": RecipeStage("ground", _fine_task_config("grounding"), grounding_record),
    "refexp": RecipeStage("refexp", _fine_task_config("refexp"), refexp_record),
    "detection": RecipeStage("detect", _fine_task_config("detection"), detection_record),
}
PRETRAIN_STAGES: dict[str, RecipeStage] = {
    "image": RecipeStage("image", image_config),
    "coarse-itc": RecipeStage("coarse", coarse_itc_config),
    "coarse": RecipeStage("coarse", coarse_config),
    # the fine-grained model is evaluated by the task stages that start from it
    "fine": RecipeStage("fine", fine_config, fine_record, run_options=(("eval_which", ()),)),
}
# family -> (its pre-training stages, the tasks it has heads for)
FAMILY_STAGES: dict[str, tuple[dict, tuple[str, ...]]] = {
    "fiber": (PRETRAIN_STAGES, tuple(TASK_STAGES)),
    "albef": ({"pretrain": RecipeStage("albef", albef_pretrain_config)}, ("retrieval", "vqa", "nlvr2")),
    "vlmo": ({"pretrain": RecipeStage("vlmo", vlmo_pretrain_config)}, ("retrieval", "vqa", "nlvr2")),
}


def task_order(preset: JobPreset, family: str, family_tasks: tuple[str, ...], requested) -> list[str]:
    """The task stages to run for ``requested``, in the family's order: each requested task and,
    transitively, the task stage its plan starts from (``StagePlan.init_from``), which must be a
    task of the family that comes before it."""
    needed: set[str] = set()
    pending = list(requested)
    while pending:
        name = pending.pop()
        if name not in family_tasks:
            raise ValueError(f"the {family} family has no {name} task; it has {', '.join(family_tasks)}")
        needed.add(name)
        source = preset.task(name).init_from
        if source:
            if source not in family_tasks or family_tasks.index(source) >= family_tasks.index(name):
                raise ValueError(f"preset {preset.name!r}: {name} starts from {source!r}, which is not a task "
                                 f"stage before it ({', '.join(family_tasks)})")
            pending.append(source)
    return [t for t in family_tasks if t in needed]


def pretrain_stages(preset: JobPreset, family: str, tasks: tuple[str, ...] | None = None) -> dict[str, RecipeStage]:
    """The family's pre-training stages that the preset and ``tasks`` (default: all) call for,
    in order: the image stage only with ``image.steps``, ITC-only only with ``itc_steps``, the
    fine-grained stage only for a fine-grained task."""
    pretrain, family_tasks = FAMILY_STAGES[family]
    needs_fine = any(t in ("grounding", "refexp", "detection") for t in (tasks or family_tasks))
    skipped = {"image": not preset.image.steps, "coarse-itc": not preset.itc_steps, "fine": not needs_fine}
    return {name: stage for name, stage in pretrain.items() if not skipped.get(name, False)}


def run_job(preset: JobPreset, out: Path, data_root: Path | None = None, redo: set[str] | None = None,
            tasks: tuple[str, ...] | None = None, echo: Callable[[str], None] = print, family: str = "fiber") -> dict:
    """Run (or continue) the whole job for one model family; returns the results dict also
    written to results.json. ``tasks``: a subset (default: every task the family has)."""
    from .report import write_report

    if family not in FAMILY_STAGES:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(FAMILY_STAGES)}")
    family_tasks = FAMILY_STAGES[family][1]
    make_data = data_root is None or not (Path(data_root) / "dataset.json").is_file()
    pretrain = pretrain_stages(preset, family, tasks)
    task_names = task_order(preset, family, family_tasks, tasks or family_tasks)
    out.mkdir(parents=True, exist_ok=True)
    runner = StageRunner(out, redo, echo, plan=["data"] * make_data + list(pretrain) + list(task_names))
    ctx = JobContext(preset, out, Path(data_root) if data_root else out / "data", runner, echo, family)
    if make_data:
        runner.run("data", lambda d: stage_data(ctx, d))
    for name, fn in pretrain.items():
        runner.run(name, lambda d, fn=fn: fn(ctx, d))
    results: dict[str, dict] = {}
    for name in task_names:
        r = runner.run(name, lambda d, name=name: TASK_STAGES[name](ctx, d))
        results.update(r if name == "detection" else {name: r})
    summary = {"preset": preset.name, "family": family, "data": str(ctx.data_root), "tasks": results,
               "stages": runner.seconds(),
               # the pipeline's time: every stage's own (a re-run that skips stages keeps them)
               "total_seconds": round(sum(runner.seconds().values()), 1)}
    write_report(ctx, summary)
    return summary

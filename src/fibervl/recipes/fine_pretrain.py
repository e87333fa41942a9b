"""``fibervl pretrain fine``: fine-grained pre-training of the grounding detector on
image-text-box data (phrase grounding + referring expressions + detection prompts).

    fibervl pretrain fine --config configs/fiber-tiny_fine_shapes.yaml model.init=runs/coarse/model

    fibervl pretrain fine model.preset=fiber-base-fine model.init=runs/coarse/model \
        --train-data mdetr:mdetr_annotations/final_mixed_train_no_coco.json:gqa/images \
        --train-data mdetr:mdetr_annotations/final_flickr_separateGT_train.json:flickr30k/images \
        --train-data o365:objects365/zhiyuan_objv2_train.json:objects365 \
        --eval-data coco:coco/annotations/instances_val2017.json:coco/val2017

Data: grounding, referring-expression and detection sources (:mod:`fibervl.data.sources`),
mixed by weight (the official setting: GoldG without COCO, Flickr30k and Objects365, each
once); a shapes source gives each kind ``data.grounding`` / ``refexp`` / ``detection`` switch
on. Detection sources train through prompts of their class names.

``model.init``: a coarse ``model/`` directory; every weight it shares with the fine model is
re-used (backbones, fusion), the rest (detector, stage feature norms) starts fresh; the report of
new and unused weights is printed and saved in ``run_dir/init_report.json``. Empty: from scratch
(the paper's "w/o coarse-grained VLP" ablation). At the end: ``run_dir/model`` and
``metrics.json`` with grounding R@k, REC accuracy and detection AP (seen classes on
``eval_split``; zero-shot on the held-out class names of ``zero_shot_split``) of a shapes
evaluation source, or the metric of another evaluation source's kind (an MDETR file: grounding
R@k, unless the task is ``refexp``; a detection file: AP over all its classes).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..data import FineCollator, ProcessedDataset
from ..data.shapes import ShapesDataset
from ..data.sources import DataSource, Mixture, format_of, open_eval, open_source
from ..errors import ConfigError
from ..data.transforms import InputSize
from ..engine.trainer import Trainer, TrainConfig
from ..experiment import DataSpec, ModelSpec, load_tokenizer
from ..modeling.factory import summarize_keys
from ..tasks.grounding import (
    DetectionPromptDataset, FineGrainedTask, FineObjectives, evaluate_detection, evaluate_grounding, evaluate_odinw,
    evaluate_refexp,
    detector_input, make_processor,
)
from .common import export_model, final_metrics, recipe_train
from .registry import Recipe


@dataclass
class FineData(DataSpec):
    """Which kinds of training data to use from a shapes source (every other source gives its
    own kind), and evaluation splits.

    ``max_classes``: classes per detection prompt (present ones + random negatives; 0 = all).
    ``image_size`` / ``max_size``: the detector's input, shorter side and cap on the longer side,
    aspect ratio kept (0 = the model's: ``fiber-base-fine`` 800 / 1333, a tiny preset its image
    size); ``train_sizes``: shorter sides drawn in multi-scale training (empty = the model's:
    ``fiber-base-fine`` 480..800 by 80). See :func:`~fibervl.tasks.grounding.detector_input`.
    ``normalization``: "imagenet" (trained here) or "official" (converted official checkpoints).
    ``chunk_size``: class names per evaluation prompt (LVIS protocol 40).
    ``eval_batch_size``: images per evaluation forward.
    """

    grounding: bool = True
    refexp: bool = True
    detection: bool = True
    max_classes: int = 6
    max_size: int = 0
    train_sizes: tuple[int, ...] = ()
    normalization: str = "imagenet"
    train_split: str = "train"
    eval_split: str = "val"
    zero_shot_split: str = "test"
    chunk_size: int = 40
    eval_batch_size: int = 16

    def input_sizes(self, model_config) -> tuple[InputSize, int]:
        """(the detector's input size, its query length) on a model of ``model_config``."""
        size = detector_input(model_config, self.image_size, self.max_size, self.train_sizes)
        return size, self.max_text_len or model_config.detection.max_query_len


@dataclass
class FineConfig:
    """FIBER's fine-grained pre-training of the grounding detector (grounding, referring
    expressions, detection prompts); the fine-grained tasks fine-tune with it too."""

    model: ModelSpec = field(default_factory=lambda: ModelSpec(preset="fiber-tiny-fine"))
    data: FineData = field(default_factory=FineData)
    objectives: FineObjectives = field(default_factory=FineObjectives)
    train: TrainConfig = field(default_factory=lambda: recipe_train("pretrain-fine", max_steps=100))
    results: str = ""  # evaluate detect: also write the detections as a COCO / LVIS results file here


FINE_KINDS = ("grounding", "refexp", "detection")


def source_kinds(data: FineData, source: DataSource, switched: tuple[str, ...] | None = None) -> list[str]:
    """The kinds of data ``source`` gives the fine-grained recipe: from a shapes set each kind
    switched on; from another format the first switched-on kind it holds (an MDETR file is read
    alike as grounding or referring expressions)."""
    on = [k for k in FINE_KINDS if getattr(data, k)] if switched is None else list(switched)
    fmt = format_of(source)
    held = [k for k in on if k in fmt.kinds]
    if source.format == "shapes":
        return held
    if not held:
        raise ConfigError(f"data source {source}: format {fmt.name!r} holds {'/'.join(fmt.kinds)} data; "
                          f"this run uses {'/'.join(on) or 'none'} (data.grounding / refexp / detection)")
    return held[:1]


def training_set(data: FineData, image_size: InputSize | int, seed: int = 0, tokenizer=None, max_len: int = 0):
    """The fine-grained training set: every (source, kind) part, mixed by the sources' weights,
    at ``image_size`` (:meth:`FineData.input_sizes`; an int ``n``: fit into ``n`` x ``n``).
    ``tokenizer`` / ``max_len``: detection prompts are built to fit that many tokens."""
    skip = data.skip_bad_records
    processor = make_processor(InputSize.of(image_size).train_transforms(), data.normalization, skip_bad=skip)
    parts, weights = [], []
    for source in data.train_sources():
        for kind in source_kinds(data, source):
            reader = open_source(source, kind, data.train_split, skip, "fine-grained training")
            if hasattr(reader, "datasets"):
                raise ConfigError(f"data source {source}: several ODinW data sets evaluate together, but training "
                                  "takes one (the paper fine-tunes each data set on its own)")
            if kind == "detection":
                parts.append(DetectionPromptDataset(reader, reader.categories, processor, max_classes=data.max_classes,
                                                   tokenizer=tokenizer, max_length=max_len))
            else:
                parts.append(ProcessedDataset(reader, processor))
            weights.append(source.weight)
    if not parts:
        raise ValueError("no training data: switch on data.grounding, data.refexp or data.detection")
    return Mixture(parts, weights, seed)


class EvalSets:
    """The evaluation readers of the evaluations in ``which`` the evaluation source allows, read
    once: ``readers[kind]``, ``category_ids[kind]`` (detection: the classes AP is averaged over),
    ``prompt_ids[kind]`` (the classes named in the prompts, where they are more than those) and
    ``group_of`` (REC groups; shapes only). A shapes source also gives ``zero_shot``: AP over
    its held-out classes on ``zero_shot_split`` (left out, saying so, when it has none), with
    every class named in the prompts, as GLIP scores LVIS's rare classes and open-vocabulary
    detection its novel ones: a prompt of the held-out names alone offers an object of a seen
    shape no name but a held-out one, so a detector that knows the seen shapes labels them
    with it."""

    def __init__(self, data: FineData, which: tuple[str, ...]):
        source = data.eval_source()
        skip = data.skip_bad_records
        self.readers: dict[str, object] = {}
        self.category_ids: dict[str, list[int]] = {}
        self.prompt_ids: dict[str, list[int]] = {}
        self.group_of = None
        if source.format == "shapes":
            shapes = ShapesDataset(source.annotations)
            split = source.split or data.eval_split
            if "zero_shot" in which and not shapes.held_out_category_ids:
                print(f"zero-shot detection left out: {shapes.root} has no held-out classes", file=sys.stderr)
                which = tuple(w for w in which if w != "zero_shot")
            self.group_of = shapes.expression_group
            for kind in which:
                if kind == "zero_shot":
                    self.readers[kind] = shapes.detection(source.split or data.zero_shot_split, skip_bad=skip)
                    self.category_ids[kind] = shapes.held_out_category_ids
                    self.prompt_ids[kind] = shapes.seen_category_ids + shapes.held_out_category_ids
                else:
                    self.readers[kind] = getattr(shapes, kind)(split, skip_bad=skip)
                    if kind == "detection":
                        self.category_ids[kind] = shapes.seen_category_ids
        else:
            kinds = source_kinds(data, source, tuple(k for k in which if k in FINE_KINDS)) if which else []
            for kind in kinds:
                reader = open_eval(source, kind, data.eval_split, skip, "fine-grained evaluation")
                self.readers[kind] = reader
                if kind == "detection":  # several ODinW data sets: each names its own classes
                    self.category_ids[kind] = sorted(getattr(reader, "categories", ()))

    @property
    def which(self) -> tuple[str, ...]:
        return tuple(self.readers)


def evaluate_all(model, tokenizer, data: FineData, sets: EvalSets, image_size: InputSize | int, max_len: int,
                 results: list | None = None) -> dict[str, float]:
    """Flat metrics of ``sets``: ``ground_r1/5/10``, ``rec_acc`` (and ``rec_acc_seen`` /
    ``rec_acc_held_out``: expressions without and with a held-out name, which only shapes test
    files have), ``det_AP..`` (seen classes on ``eval_split``), ``zs_AP..`` (held-out names on
    ``zero_shot_split``). ``results``: a list the ``detection`` evaluation's detections are
    appended to (the official results format, :func:`~fibervl.tasks.grounding.detection_results`)."""
    kw = dict(image_size=image_size, max_len=max_len, limit=data.num_eval, batch_size=data.eval_batch_size,
              normalization=data.normalization)
    out: dict[str, float] = {}
    r = sets.readers
    if "grounding" in r:
        out.update({f"ground_{k}": v for k, v in evaluate_grounding(model, tokenizer, r["grounding"], **kw).items()})
    if "refexp" in r:
        m = evaluate_refexp(model, tokenizer, r["refexp"], group_of=sets.group_of, **kw)
        out.update({f"rec_{k}": v for k, v in m.items()})
    for kind, prefix in (("detection", "det"), ("zero_shot", "zs")):
        if kind in r and hasattr(r[kind], "datasets"):  # an ODinW list: AP of each data set, and their mean
            if results is not None:
                raise ConfigError("--results writes one data set's detections (their image ids would clash): "
                                  "evaluate the ODinW data sets one at a time to write results files")
            m = evaluate_odinw(model, tokenizer, r[kind].datasets, chunk_size=data.chunk_size, **kw)
            out.update({f"{prefix}_{k}": v for k, v in m.items()})
        elif kind in r:
            m = evaluate_detection(model, tokenizer, r[kind], sets.category_ids[kind], chunk_size=data.chunk_size,
                                   prompt_ids=sets.prompt_ids.get(kind),
                                   results=results if kind == "detection" else None, **kw)
            out.update({f"{prefix}_{k}": v for k, v in m.items()})
    return out


def init_report_text(report: dict) -> str:
    if not report["init"]:
        return "initialised from scratch"
    new, unused = summarize_keys(report["new"]), summarize_keys(report["unused"])
    return (f"initialised from {report['init']}: {len(report['new'])} new weights {new}; "
            f"{len(report['unused'])} unused weights of the source {unused}")


def run(cfg: FineConfig, train_data=None, eval_which=("grounding", "refexp", "detection", "zero_shot")) -> dict:
    """Train on ``train_data`` (default: :func:`training_set` of ``cfg.data``) and evaluate."""
    tokenizer = load_tokenizer(cfg.data, cfg.model.init)
    model, loaded = cfg.model.build(tokenizer, init_as="weights", with_report=True)
    report = loaded.to_dict()
    if model.config.detection is None:
        raise ValueError(f"model preset {cfg.model.preset!r} has no detection config")
    print(init_report_text(report), flush=True)
    run_dir = Path(cfg.train.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "init_report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    image_size, max_len = cfg.data.input_sizes(model.config)
    train = train_data if train_data is not None else training_set(cfg.data, image_size, cfg.train.seed, tokenizer, max_len)
    sets = EvalSets(cfg.data, eval_which)

    def evaluate(m) -> dict[str, float]:
        return evaluate_all(m, tokenizer, cfg.data, sets, image_size, max_len)

    trainer = Trainer(cfg.train, model, FineGrainedTask(cfg.objectives), train, collate_fn=FineCollator(tokenizer, max_len),
                      evaluate=evaluate, config_snapshot=cfg)
    summary = trainer.fit()
    metrics = final_metrics(summary, evaluate, model)
    export_model(model, cfg.train.run_dir, {"init": cfg.model.init, **metrics}, tokenizer=tokenizer, data=cfg.data)
    summary["eval"] = metrics
    summary["init_report"] = report
    return summary


RECIPE = Recipe("fine", "fine-grained pre-training of FIBER's grounding detector", FineConfig, run, stage="pretrain")

"""What the image-text recipes share: caption data, its readers, and the pre-training setup.

The coarse-grained pre-training recipes (``pretrain coarse|albef|vlmo``) train on image-caption
pairs and evaluate dual-encoder (ITC) retrieval; the caption-reading tasks (``retrieval``,
``caption``) read the same data. :class:`CaptionData` describes it, :func:`caption_reader`
opens a split of it, :func:`image_text_setup` builds what a pre-training recipe trains and
:func:`train_and_export` trains it and writes ``run_dir/model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data import PairCollator, Processor
from ..data.sources import DataSource, open_eval, training_data, training_reader
from ..data.transforms import train_transforms
from ..engine.precision import uses_bf16
from ..engine.trainer import Trainer, TrainConfig
from ..experiment import DataSpec, ModelSpec, load_tokenizer
from ..tasks.retrieval import evaluate_itc_retrieval
from .common import export_model, final_metrics

CAPTION_FORMATS = ("karpathy", "coco_captions")


@dataclass
class CaptionData(DataSpec):
    """``captions``: a captions file (empty: ``root`` is a shapes data set) in ``format``:

    * ``karpathy``: Karpathy's split file (``dataset_coco.json``), every split in one file;
      ``image_root`` (default ``root``) is what its ``filepath/filename`` entries are relative to;
    * ``coco_captions``: COCO's ``captions_{split}.json``, one file per split: ``{split}`` in
      ``captions`` and ``image_root`` becomes the split name (``train2017``); ``image_root``
      defaults to ``root/{split}``, COCO's own layout (``coco/train2017/000000391895.jpg``).
    """

    captions: str = ""
    format: str = "karpathy"
    image_root: str = ""
    train_split: str = "train"
    eval_split: str = "val"

    def legacy_source(self) -> DataSource:
        if not self.captions:
            return DataSource("shapes", self.root)
        if self.format == "karpathy":
            return DataSource("karpathy", self.captions, self.image_root or self.root)
        if self.format == "coco_captions":
            return DataSource("coco_captions", self.captions, self.image_root or str(Path(self.root) / "{split}"))
        raise ValueError(f"data.format must be one of {CAPTION_FORMATS}, got {self.format!r}")


@dataclass
class FinetuneCaptionData(CaptionData):
    """The caption data of a fine-tuning recipe (retrieval, captioning). ``cache_image_prefix``:
    train on cached image prefixes (needs model.freeze_prefix; no image augmentation):
    :mod:`fibervl.tasks.prefix_cache`."""

    cache_image_prefix: bool = False


def caption_reader(data: CaptionData, split: str, seed: int = 0):
    """The captions of ``split`` as ``data`` describes them (skipping bad pairs if it says so):
    at ``data.train_split`` the training sources mixed by weight (indexable ones only), at any
    other split the evaluation source."""
    skip = data.skip_bad_records
    if split == data.train_split:
        return training_reader(data.train_sources(), "captions", split, skip, seed)
    return open_eval(data.eval_source(), "captions", split, skip)


@dataclass
class ImageTextSetup:
    """What every image-text pre-training recipe (coarse, ALBEF, VLMo) starts from: the data
    set's tokenizer, the model, the training pairs, and the dual-encoder retrieval evaluation
    on ``data.eval_split`` (``evaluate(model) -> {"i2t_r1", ...}``)."""

    tokenizer: object
    model: object
    train: object  # a ProcessedDataset; a MixedStream when a source is a stream
    collate: PairCollator
    evaluate: object


def freeze_unreached_parts(model) -> list[str]:
    """Stop training the parts no image-text pre-training step reaches: the VQA and NLVR2 heads
    and FIBER's caption projections. They would get no gradient anyway (their weights are saved
    as initialised either way), but under ``torchrun`` DDP stops at the second step when a
    trainable parameter got none. Returns the names of the parts frozen."""
    parts = {f"heads.{name}": getattr(model.heads, name, None) for name in ("vqa", "nlvr2")}
    parts["cross_modal.caption_image_proj"] = getattr(getattr(model, "cross_modal", None), "caption_image_proj", None)
    frozen = []
    for name, module in parts.items():
        if module is not None and any(True for _ in module.parameters()):
            module.requires_grad_(False)
            frozen.append(name)
    return frozen


def image_text_setup(model_spec: ModelSpec, data: CaptionData, train_cfg: TrainConfig, family: str) -> ImageTextSetup:
    """Build :class:`ImageTextSetup`; the model must be of ``family`` (the recipe's own)."""
    tokenizer = load_tokenizer(data, model_spec.init)
    model = model_spec.build(tokenizer, family=family)
    mcfg = model.config
    freeze_unreached_parts(model)
    image_size, max_len = data.input_sizes(mcfg)
    skip = data.skip_bad_records
    # caption files are mixed by weight, webdataset shards streamed beside them
    train = training_data(data.train_sources(), "captions", data.train_split,
                          Processor(train_transforms(image_size), skip_bad=skip), skip, train_cfg.seed)
    eval_reader = caption_reader(data, data.eval_split)
    bf16 = uses_bf16(train_cfg.precision, train_cfg.device)

    def evaluate(m) -> dict[str, float]:
        return evaluate_itc_retrieval(m, tokenizer, eval_reader, image_size, max_len, limit=data.num_eval, bf16=bf16)

    return ImageTextSetup(tokenizer, model, train, PairCollator(tokenizer, max_len), evaluate)


def special_ids(tokenizer) -> tuple[int, int, int]:
    """The ids MLM never masks."""
    return tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id


def train_and_export(cfg, setup: ImageTextSetup, task) -> dict:
    """Train ``setup.model`` with ``task`` (``cfg.train``), evaluate once, export
    ``run_dir/model`` with ``metrics.json``; the trainer's summary with ``"eval"``."""
    trainer = Trainer(cfg.train, setup.model, task, setup.train, collate_fn=setup.collate, evaluate=setup.evaluate,
                      config_snapshot=cfg)
    summary = trainer.fit()
    metrics = final_metrics(summary, setup.evaluate, setup.model)
    export_model(setup.model, cfg.train.run_dir, {"eval_split": cfg.data.eval_split, **metrics}, tokenizer=setup.tokenizer,
                 data=cfg.data)
    summary["eval"] = metrics
    return summary

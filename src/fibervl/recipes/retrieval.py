"""``fibervl finetune|evaluate|predict retrieval``: image-text retrieval.

    fibervl finetune retrieval --config configs/fiber-tiny_retrieval_shapes.yaml --init RUN_OR_MODEL
    fibervl evaluate retrieval --model RUN/model --data-root DIR [--split test]
    fibervl predict retrieval --model RUN/model --image x.jpg --texts "a,b,c"
    fibervl predict retrieval --model RUN/model --text "..." --images DIR_OR_FILES [--save-gallery G]
    fibervl predict retrieval --model RUN/model --text "..." --gallery G

Fine-tuning: ITC + ITM with hard negatives (the coarse pre-training task with the MLM weight 0).
Evaluation: dual-encoder (ITC) recall and the ITC top-``eval.rerank_k`` re-ranked with
ITC + w x ITM (see :mod:`fibervl.tasks.retrieval`), R@1/5/10 both ways and rsum; with
``eval.modes`` the paper's Table 4 modes side by side with their costs. The ITM weight w is
``eval.itm_weight``, else the model card's; fine-tuning with ``eval.itm_weight_split=val`` chooses
it on that split and writes it into the exported model's card.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import PairCollator
from ..data.transforms import train_transforms
from ..engine.precision import uses_bf16
from ..engine.trainer import Trainer, TrainConfig
from ..experiment import ModelSpec, load_tokenizer, split_name
from ..tasks.pretrain_coarse import CoarseObjectives, CoarsePretrainTask
from ..predict.card import card_of
from ..tasks.retrieval import (ITM_WEIGHTS, SWEEP_PREFIX, choose_itm_weight, evaluate_itc_retrieval,
                               evaluate_retrieval)
from .common import (evaluation_processes, export_task_model, fused_training_data, load_model_dir,
                     recipe_train, required_model)
from .image_text import FinetuneCaptionData, caption_reader, special_ids
from .registry import Recipe


@dataclass
class RetrievalEval:
    """``rerank_k``: re-rank the dual encoder's top k with ITC + ITM (0: dual encoder only; at
    least the gallery size: the full ensemble); ``faiss``: find the candidates with FAISS.
    ``modes``: the paper's Table 4 side by side, each with its recall, fused passes and seconds:
    ``itc``, ``itm`` (ITM alone over every pair), ``itc+itm`` (their sum over every pair),
    ``rerank@K`` (e.g. ``[itc, itm, itc+itm, rerank@10, rerank@20, rerank@50, rerank@100]``).
    ``prefix_dtype`` (``float32`` or ``bfloat16``: empty keeps what the model computes) and
    ``prefix_dir`` (a directory: the gallery's prefixes memory-mapped there instead of in RAM)
    keep large galleries in memory bounds (:mod:`fibervl.tasks.gallery`).
    ``itm_weight``: w in the re-ranking score ITC + w x ITM (empty: the model card's, 1 for a
    model without one); ``itm_weight_split`` (fine-tuning only, e.g. ``val``): choose w on that
    split among :data:`~fibervl.tasks.retrieval.ITM_WEIGHTS` (best mean R@1 of both directions),
    evaluate with it and record it in the model's card."""

    rerank_k: int = 16
    faiss: bool = False
    itm_batch_size: int = 64
    modes: tuple[str, ...] = ()
    prefix_dtype: str = ""
    prefix_dir: str = ""
    itm_weight: float | None = None
    itm_weight_split: str = ""


RetrievalData = FinetuneCaptionData  # captions, and training on cached image prefixes


@dataclass
class RetrievalConfig:
    """Retrieval fine-tuning (ITC + ITM with hard negatives) and its evaluation (ITC recall, ITM re-ranking)."""

    model: ModelSpec = field(default_factory=ModelSpec)
    data: RetrievalData = field(default_factory=RetrievalData)
    objectives: CoarseObjectives = field(default_factory=lambda: CoarseObjectives(mlm=0.0))
    eval: RetrievalEval = field(default_factory=RetrievalEval)
    train: TrainConfig = field(default_factory=lambda: recipe_train("finetune-retrieval", max_steps=100))


PREFIX_DTYPES = {"": None, "float32": torch.float32, "bfloat16": torch.bfloat16}


def evaluate(cfg: RetrievalConfig, model, tokenizer, split: str | None = None, itm_weight: float = 1.0,
             sweep_itm_weights: tuple[float, ...] = ()) -> dict:
    if cfg.eval.prefix_dtype not in PREFIX_DTYPES:
        raise ValueError(f"eval.prefix_dtype={cfg.eval.prefix_dtype!r}: use float32 or bfloat16 (empty: as computed)")
    image_size, max_len = cfg.data.input_sizes(model.config)
    return evaluate_retrieval(model, tokenizer, caption_reader(cfg.data, split or cfg.data.eval_split), image_size, max_len,
                              limit=cfg.data.num_eval, rerank_k=cfg.eval.rerank_k, use_faiss=cfg.eval.faiss,
                              itm_batch_size=cfg.eval.itm_batch_size, bf16=uses_bf16(cfg.train.precision, cfg.train.device),
                              modes=cfg.eval.modes, prefix_dtype=PREFIX_DTYPES[cfg.eval.prefix_dtype],
                              prefix_dir=cfg.eval.prefix_dir or None, itm_weight=itm_weight,
                              sweep_itm_weights=sweep_itm_weights)


def _check_itm_weight(cfg: RetrievalConfig) -> None:
    w = cfg.eval.itm_weight
    if w is not None and not (isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0):
        raise ValueError(f"eval.itm_weight={w!r}: a number >= 0 (0 keeps the ITC order), or empty for the model card's")
    if cfg.eval.itm_weight_split and w is not None:
        raise ValueError(f"eval.itm_weight={w} and eval.itm_weight_split={cfg.eval.itm_weight_split!r}: "
                         "give the weight or the split to choose it on, not both")
    if cfg.eval.itm_weight_split and cfg.eval.itm_weight_split == cfg.data.eval_split:
        raise ValueError(f"eval.itm_weight_split={cfg.eval.itm_weight_split!r} is also data.eval_split: a weight chosen "
                         "on the split it is scored on flatters the recall; choose it on another split (val)")
    if cfg.eval.itm_weight_split and cfg.eval.rerank_k <= 0:
        raise ValueError("eval.itm_weight_split chooses the re-ranking weight: it needs eval.rerank_k > 0")


def evaluate_chosen_weight(cfg: RetrievalConfig, model, tokenizer) -> tuple[dict, float]:
    """(metrics on ``data.eval_split``, the ITM weight they used): ``eval.itm_weight``, 1, or with
    ``eval.itm_weight_split`` the best of :data:`ITM_WEIGHTS` on that split, whose sweep is
    kept in the metrics as ``SPLIT/itm_weight_sweep/W``."""
    weight = 1.0 if cfg.eval.itm_weight is None else float(cfg.eval.itm_weight)
    chosen_on: dict = {}
    if cfg.eval.itm_weight_split:
        split = cfg.eval.itm_weight_split
        sweep = evaluate(cfg, model, tokenizer, split=split, sweep_itm_weights=ITM_WEIGHTS)
        weight = choose_itm_weight(sweep)
        chosen_on = {f"{split}/{k}": v for k, v in sweep.items() if k.startswith(SWEEP_PREFIX)}
        chosen_on[f"{split}/itc_r1_mean"] = (sweep["itc_i2t_r1"] + sweep["itc_t2i_r1"]) / 2
        print(f"ITM re-ranking weight {weight:g}, chosen on {split} (mean R@1: ITC {chosen_on[f'{split}/itc_r1_mean']:.2f}, "
              f"re-ranked {sweep[SWEEP_PREFIX + f'{weight:g}']:.2f})")
    return {**evaluate(cfg, model, tokenizer, itm_weight=weight), **chosen_on}, weight


def run(cfg: RetrievalConfig) -> dict:
    """Fine-tune, evaluate on ``data.eval_split``, export ``run_dir/model`` (with its tokenizer)."""
    if cfg.objectives.mlm:
        raise ValueError("retrieval fine-tuning is ITC + ITM: set objectives.mlm=0")
    _check_itm_weight(cfg)
    tokenizer = load_tokenizer(cfg.data, cfg.model.init)
    model, loaded = cfg.model.build(tokenizer, with_report=True)
    if cfg.model.init and loaded.new:
        print(f"new weights (not in {cfg.model.init}): {loaded.new}")
    image_size, max_len = cfg.data.input_sizes(model.config)
    mcfg = model.config
    eval_reader = caption_reader(cfg.data, cfg.data.eval_split)
    bf16 = uses_bf16(cfg.train.precision, cfg.train.device)
    train, cache = fused_training_data(caption_reader(cfg.data, cfg.data.train_split, cfg.train.seed),
                                       train_transforms(image_size), model,
                                       cfg.data.cache_image_prefix, image_size, bf16, cfg.train.device)

    def periodic(m) -> dict[str, float]:  # cheap during training: dual encoder only
        return evaluate_itc_retrieval(m, tokenizer, eval_reader, image_size, max_len, limit=cfg.data.num_eval, bf16=bf16)

    # The ITC queue holds embeddings: hidden_size wide for FIBER, embed_dim for families with a
    # separate ITC width (ALBEF).
    itc_dim = getattr(mcfg, "embed_dim", mcfg.hidden_size)
    task = CoarsePretrainTask(cfg.objectives, itc_dim, mcfg.text.vocab_size, mcfg.text.mask_token_id,
                              special_ids(tokenizer), seed=cfg.train.seed,
                              swap_table=cfg.objectives.swap_table(tokenizer))
    # The periodic evaluation is the cheap dual-encoder one, and only when asked for: the final
    # evaluation below (with ITM re-ranking) is the one that counts.
    summary = Trainer(cfg.train, model, task, train, collate_fn=PairCollator(tokenizer, max_len, cache),
                      evaluate=periodic if cfg.train.eval_every else None, config_snapshot=cfg).fit()
    metrics, weight = evaluate_chosen_weight(cfg, model, tokenizer)
    export_task_model(model, tokenizer, cfg.train.run_dir, {"eval_split": cfg.data.eval_split, **metrics},
                      data=cfg.data, card_fields={"itm_weight": weight})
    summary["eval"] = metrics
    return summary


def _data_tokenizer(data):
    """The data set's tokenizer if there is one (for model directories without their own)."""
    try:
        return load_tokenizer(data)
    except FileNotFoundError:
        return None


def evaluate_saved(cfg: RetrievalConfig) -> dict:
    """``evaluate retrieval``: the metrics of the saved model ``--model DIR`` on ``data.eval_split``
    (under torchrun the images, texts and re-ranked pairs split across the processes)."""
    model_dir = required_model(cfg, "retrieval")
    _check_itm_weight(cfg)
    if cfg.eval.itm_weight_split:
        raise ValueError("eval.itm_weight_split is chosen while fine-tuning; evaluate takes eval.itm_weight "
                         "(default: the model card's)")
    with evaluation_processes(cfg.train.device) as device:
        model, tokenizer, directory = load_model_dir(model_dir, device=str(device),
                                                     fallback_tokenizer=_data_tokenizer(cfg.data))
        weight = card_of(directory).itm_weight if cfg.eval.itm_weight is None else float(cfg.eval.itm_weight)
        return {"split": split_name(cfg.data.eval_source(), cfg.data.eval_split),
                **evaluate(cfg, model, tokenizer, itm_weight=weight)}


def predict(model_dir: str | Path, images: list[str], texts: list[str], rerank_k: int = 16) -> list[dict]:
    """Rank ``texts`` for one image, or ``images`` for each text: per query ``{"query",
    "ranking": [{"item", "itc", "score"}, ...]}`` over the whole gallery, best first. A thin
    wrapper of :class:`~fibervl.predict.Gallery` and :class:`~fibervl.predict.RetrievalPredictor`
    (use them directly to embed a gallery once and search it many times)."""
    from ..predict import Gallery, RetrievalPredictor, load

    model, processor = load(model_dir, task="retrieval")
    if len(images) == 1:
        gallery, queries = Gallery.build(model, processor, texts=texts), images
    else:
        gallery, queries = Gallery.build(model, processor, images=images), texts
    return RetrievalPredictor(model, processor, gallery, rerank_k=rerank_k, top=0).predict(queries)


RECIPE = Recipe("retrieval", "image-text retrieval (R@1/5/10 both ways)", RetrievalConfig, run,
                evaluate=evaluate_saved, predict=True,
                evaluate_aliases={"--rerank-k": "eval.rerank_k", "--itm-weight": "eval.itm_weight"})

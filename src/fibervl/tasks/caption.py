"""Image captioning: fine-tuning in caption mode (MLE, SCST or GOLD), decoding and COCO caption metrics.

Caption mode (:meth:`FiberModel.caption_features`): the image runs through Swin alone, the
text is causal and its fused layers attend to the final image tokens. The LM head is the MLM
head; position i predicts token i + 1. A training batch is a dict with ``images [B, 3, H, W]``,
``input_ids [B, T]`` (``<s> w1 .. wn </s>`` then padding) and ``attention_mask [B, T]``
(``image_prefix`` instead of ``images`` when prefixes are cached; SCST also needs ``image_ids
[B]``, the keys of the training references). The objectives other than MLE are in
:mod:`fibervl.tasks.caption_objectives`.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..data import Processor, Sample, Tokenizer
from ..data.transforms import eval_transforms
from ..engine import distributed as D
from ..engine.precision import eval_autocast
from ..metrics.cider import CiderD
from .caption_objectives import gold_loss, scst_loss
from .decoding import DecodeConfig, generate


OBJECTIVES = ("mle", "scst", "gold")


@dataclass
class CaptionSettings:
    """Training and decoding settings. ``objective``: ``mle`` (teacher forcing), ``scst`` (CIDEr
    optimisation) or ``gold`` (learning from demonstrations); the last two continue from an MLE
    model. ``scst_samples``: captions sampled per image; ``scst_mle_weight``: share of the MLE
    loss in the SCST loss; ``gold_min_weight``: GOLD's lower bound on a token's weight;
    ``gold_refresh_every``: optimizer steps between refreshes of GOLD's frozen copy (official
    values: 5, 0.3, 0.1, 1000). ``label_smoothing`` of the MLE loss; decoding:
    ``beam_size`` (1 = greedy), ``max_length`` generated tokens, ``min_length``,
    ``length_penalty`` (scores are ``sum log p / length ** length_penalty``), ``banned_ids``
    (never generated; BOS, PAD and the mask token always are); ``eval_batch_size`` images;
    ``spice``: try SPICE too (when its models are absent it is reported unavailable, at no cost)."""

    objective: str = "mle"
    scst_samples: int = 5
    scst_mle_weight: float = 0.3
    gold_min_weight: float = 0.1
    gold_refresh_every: int = 1000
    label_smoothing: float = 0.0
    beam_size: int = 3
    max_length: int = 20
    min_length: int = 0
    length_penalty: float = 1.0
    banned_ids: tuple[int, ...] = ()
    eval_batch_size: int = 32
    spice: bool = True

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"caption.objective must be one of {', '.join(OBJECTIVES)}; got {self.objective!r}")
        if self.scst_samples < 1:
            raise ValueError(f"caption.scst_samples must be >= 1, got {self.scst_samples}")
        if not 0.0 <= self.scst_mle_weight <= 1.0:
            raise ValueError(f"caption.scst_mle_weight must be in [0, 1], got {self.scst_mle_weight}")
        if self.gold_refresh_every < 1:
            raise ValueError(f"caption.gold_refresh_every must be >= 1, got {self.gold_refresh_every}")

    def decode_config(self, beam_size: int | None = None, use_cache: bool = True) -> DecodeConfig:
        return DecodeConfig(beam_size=beam_size or self.beam_size, max_length=self.max_length,
                            min_length=self.min_length, length_penalty=self.length_penalty,
                            banned_ids=tuple(self.banned_ids), use_cache=use_cache)


def caption_mle_loss(model, images: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     label_smoothing: float = 0.0, image_prefix: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced cross-entropy: inputs ``ids[:, :-1]`` predict ``ids[:, 1:]``; padding is
    ignored. images [B, 3, H, W] (or, cached, their ``image_prefix`` [B, Hs, Ws, Cs] of a frozen
    prefix: :mod:`fibervl.tasks.prefix_cache`); ids, mask [B, T]. Returns (mean loss over target
    tokens, token accuracy)."""
    return caption_token_loss(model, model.caption_image(images, image_prefix=image_prefix), input_ids,
                              attention_mask, label_smoothing)


def caption_token_loss(model, image_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`caption_mle_loss` from the image tokens [B, N, C] of :meth:`FiberModel.caption_image`."""
    feats = model.caption_features(image_tokens, input_ids, attention_mask)
    # A target is real when the token itself is (the mask is 1 on <s> .. </s>); position i of a
    # causal model never sees i + 1, so the padding after </s> changes nothing before it.
    target_real = attention_mask[:, 1:].bool()
    logits = model.mlm_logits(feats[:, :-1][target_real]).float()
    targets = input_ids[:, 1:][target_real]
    loss = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    return loss, (logits.argmax(-1) == targets).float().mean().detach()


class CaptionTask(nn.Module):
    """The engine task for caption fine-tuning with ``settings.objective``.

    SCST needs the ``tokenizer`` (to read the samples) and ``references`` {image id: the
    image's training captions}, keyed as the batch's ``image_ids``; the CIDEr-D document
    frequencies are computed from these references. GOLD keeps a frozen copy of the model,
    made at the first step and refreshed every ``gold_refresh_every`` steps; it is not part of
    the task's modules (not trained, not checkpointed: a resumed run copies the resumed model).
    """

    def __init__(self, settings: CaptionSettings, tokenizer: Tokenizer | None = None,
                 references: dict[int, list[str]] | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.tokenizer, self.references, self.cider = tokenizer, references, None
        if settings.objective == "scst":
            if tokenizer is None or not references:
                raise ValueError("caption.objective=scst needs the tokenizer and the training references per image")
            self.cider = CiderD(references.values())
        self._behaviour: list[nn.Module] = []  # a list keeps GOLD's copy out of the module tree

    def training_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        s = self.settings
        images, prefix, ids, mask = batch.get("images"), batch.get("image_prefix"), batch["input_ids"], batch["attention_mask"]
        if s.objective == "gold":
            if not self._behaviour:
                self.refresh_behaviour(model)
            loss, logs = gold_loss(model, self._behaviour[0], images, ids, mask, s.gold_min_weight, image_prefix=prefix)
            return {"loss": loss, **logs}
        if s.objective == "mle":
            loss, acc = caption_mle_loss(model, images, ids, mask, s.label_smoothing, image_prefix=prefix)
            return {"loss": loss, "mle": loss.detach(), "token_acc": acc}
        image_tokens = model.caption_image(images, image_prefix=prefix)
        keys = batch["image_ids"].tolist()
        missing = [k for k in keys if k not in self.references]
        if missing:
            raise KeyError(f"SCST has no references for image id {missing[0]} (the references must be the training split's)")
        rl, logs = scst_loss(model, image_tokens, [self.references[k] for k in keys], self.tokenizer, self.cider,
                             s.scst_samples, s.decode_config(beam_size=1))
        out = {"rl": rl.detach(), **logs}
        if s.scst_mle_weight > 0:
            mle, acc = caption_token_loss(model, image_tokens, ids, mask, s.label_smoothing)
            out.update(mle=mle.detach(), token_acc=acc)
            rl = s.scst_mle_weight * mle + (1 - s.scst_mle_weight) * rl
        return {"loss": rl, **out}

    def refresh_behaviour(self, model) -> None:
        """GOLD: replace the frozen copy by one of ``model`` now (eval mode, no grad)."""
        frozen = copy.deepcopy(model).eval()
        for p in frozen.parameters():
            p.requires_grad_(False)
            p.grad = None
        self._behaviour[:] = [frozen]

    def on_step_end(self, model, step: int) -> None:
        if self.settings.objective == "gold" and step % self.settings.gold_refresh_every == 0:
            self.refresh_behaviour(model)


@torch.no_grad()
def caption_images(model, tokenizer: Tokenizer, images: torch.Tensor, decode: DecodeConfig,
                   bf16: bool = False) -> list[str]:
    """Captions of ``images`` [B, 3, H, W] (already transformed and normalised)."""
    device = next(model.parameters()).device
    with eval_autocast(device, bf16):
        image_tokens = model.caption_image(images.to(device))
        decoded = generate(model, image_tokens, decode, tokenizer.bos_token_id, tokenizer.eos_token_id,
                           tokenizer.pad_token_id, extra_banned=(tokenizer.mask_token_id,))
    return [tokenizer.decode(d.tokens).strip() for d in decoded]


def caption_paths(model, tokenizer: Tokenizer, paths: list[Path], image_size: int, decode: DecodeConfig,
                  batch_size: int = 32, bf16: bool = False) -> list[str]:
    """Captions of the image files ``paths`` (eval transforms at ``image_size``)."""
    processor = Processor(eval_transforms(image_size))
    samples = [Sample(sample_id=str(p), image_id=i, image_path=Path(p)) for i, p in enumerate(paths)]
    loader = DataLoader(samples, batch_size=batch_size,
                        collate_fn=lambda batch: torch.stack([processor(s).pixel_values for s in batch]))
    was_training = model.training
    model.eval()
    try:
        return [c for images in loader for c in caption_images(model, tokenizer, images, decode, bf16)]
    finally:
        model.train(was_training)


def evaluate_captioning(model, tokenizer: Tokenizer, reader, image_size: int, decode: DecodeConfig,
                        limit: int = 0, batch_size: int = 32, bf16: bool = False,
                        spice: bool = False) -> tuple[dict, list[dict]]:
    """Caption every image of a captions split (e.g. :class:`~fibervl.data.KarpathyCaptions`;
    ``limit``: the first N images only) and score against all its references. Under torchrun the
    images are split across the processes and every process returns the same (collective: call
    it on every rank).

    Returns (metrics of :func:`~fibervl.metrics.caption.caption_scores`, predictions
    [{"image_id", "caption"}] in the COCO results format)."""
    from ..metrics.caption import caption_scores

    images = reader.images[:limit] if limit else reader.images
    # Under torchrun each process captions its share of the images (whole batches of the one
    # process: the same captions); they are gathered in order and scored once (rank 0: the
    # scorers are Java programs), the scores sent to every rank.
    share = D.rank_share(images, batch_size)
    if D.is_distributed():
        print(f"Caption evaluation: rank {D.get_rank()} of {D.get_world_size()} captions {len(share)} of "
              f"{len(images)} images", file=sys.stderr)
    captions = D.gather_shares(caption_paths(model, tokenizer, [img["image_path"] for img in share], image_size,
                                             decode, batch_size, bf16), len(images), batch_size)
    predictions = {img["image_id"]: c for img, c in zip(images, captions)}
    references = {img["image_id"]: img["captions"] for img in images}
    metrics = D.computed_once(caption_scores, predictions, references, spice=spice)
    return metrics, [{"image_id": k, "caption": c} for k, c in predictions.items()]

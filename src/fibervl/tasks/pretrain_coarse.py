"""Coarse-grained pre-training: ITC + ITM with global hard negatives + MLM (FIBER stage 1).

One training step, for a batch of B image-text pairs per rank:

1. dual encoder (no fusion): image and text embeddings -> ITC against every rank's pairs
   (gathered with gradient) and, optionally, a queue of past features;
2. for each image a negative text, and for each text a negative image, drawn from the softmax of
   the ITC similarities over the global batch, positives (and pairs of the same image) excluded;
   the fusion encoder scores the 3B pairs -> ITM cross-entropy;
3. 15 % of the text tokens masked 80/10/10 -> fusion encoder -> MLM cross-entropy.

The batch is a dict with ``images [B, 3, H, W]``, ``input_ids [B, T]``, ``attention_mask [B, T]``
and optionally ``image_ids [B]`` (pairs sharing an image are never drawn as negatives). A model
with a frozen prefix may be given ``image_prefix [B, Hs, Ws, Cs]`` (cached, see
:mod:`fibervl.tasks.prefix_cache`) instead of ``images``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..engine.distributed import all_gather_no_grad, is_distributed
from .objectives import (
    FeatureQueue,
    clamp_temperature_,
    itc_logits,
    itm_hard_negative_batch,
    itm_loss,
    mask_tokens,
    sample_hard_negatives,
)


@dataclass
class CoarseObjectives:
    """Weights of the three losses and their settings (the official recipe: all 1, no queue here).

    ``itm_negatives``: "hard" (official: drawn from the softmax of the ITC similarities) or
    "random" (uniform over the other pairs of the global batch). On templated, partial captions
    ("one shape", "a blue shape") a hard negative often describes the image too.
    """

    itc: float = 1.0
    itm: float = 1.0
    mlm: float = 1.0
    mlm_prob: float = 0.15
    queue_size: int = 0
    itm_negatives: str = "hard"

    def __post_init__(self) -> None:
        if self.itm_negatives not in ("hard", "random"):
            raise ValueError(f"objectives.itm_negatives must be 'hard' or 'random', got {self.itm_negatives!r}")


class CoarsePretrainTask(nn.Module):
    """The engine task for coarse pre-training. Its ITC queue (if any) is a checkpointed buffer."""

    def __init__(self, objectives: CoarseObjectives, embed_dim: int, vocab_size: int, mask_token_id: int,
                 special_token_ids: tuple[int, ...]) -> None:
        super().__init__()
        self.objectives = objectives
        self.vocab_size = vocab_size
        self.mask_token_id = mask_token_id
        self.register_buffer("special_ids", torch.tensor(sorted(set(special_token_ids)), dtype=torch.long), persistent=False)
        self.queue = FeatureQueue(embed_dim, objectives.queue_size) if objectives.queue_size else None

    def training_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        images, ids, mask = batch.get("images"), batch["input_ids"], batch["attention_mask"]
        obj = self.objectives
        logs: dict[str, torch.Tensor] = {}

        # Below their first fusion layer both backbones compute the same thing in every pass of
        # this step (ITC, the 3B ITM pairs, MLM): run that part once per image and per text.
        cached = batch.get("image_prefix")
        image_prefix = cached if cached is not None else model.image_prefix(images)
        loss = image_prefix.new_zeros((), dtype=torch.float32)
        text_prefix = model.text_prefix(ids, mask)
        image_embed = model.encode_image(image_prefix=image_prefix)
        text_embed = model.encode_text(ids, mask, text_prefix=text_prefix)
        itc = itc_logits(image_embed, text_embed, model.temperature, queue=self.queue)
        loss = loss + obj.itc * itc.loss
        logs["itc"] = itc.loss.detach()
        logs["temperature"] = model.temperature.detach()

        if obj.itm:
            itm, itm_acc = self._itm(model, images, ids, mask, batch.get("image_ids"), itc, image_prefix, text_prefix)
            loss = loss + obj.itm * itm
            logs.update(itm=itm.detach(), itm_acc=itm_acc)
        if obj.mlm:
            mlm, mlm_acc = self._mlm(model, image_prefix, ids, mask)
            loss = loss + obj.mlm * mlm
            logs.update(mlm=mlm.detach(), mlm_acc=mlm_acc)
        if self.queue is not None:
            self.queue.enqueue_global(image_embed.detach().float(), text_embed.detach().float())
        logs["loss"] = loss
        return logs

    def _itm(self, model, images, ids, mask, image_ids, itc, image_prefix, text_prefix) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` is None when the batch carried cached ``image_prefix`` instead."""
        n = itc.num_global
        exclude = None
        if image_ids is not None:
            ids_global = all_gather_no_grad(image_ids)
            exclude = image_ids[:, None] == ids_global[None, :]
        i2t, t2i = itc.logits_i2t[:, :n], itc.logits_t2i[:, :n]
        if self.objectives.itm_negatives == "random":  # equal logits: a uniform draw
            i2t, t2i = torch.zeros_like(i2t), torch.zeros_like(t2i)
        neg_text = sample_hard_negatives(i2t, itc.targets, exclude=exclude)
        neg_image = sample_hard_negatives(t2i, itc.targets, exclude=exclude)
        if is_distributed():
            # Negatives may live on other ranks: their prefixes are computed here from the
            # gathered inputs, so the gradient reaches the prefix layers through them too (a
            # cached image prefix is frozen: it is gathered as it is).
            ids_all, mask_all = all_gather_no_grad(ids), all_gather_no_grad(mask)
            neg_image, neg_text = neg_image.to(ids.device), neg_text.to(ids.device)
            if images is None:
                image_pool = all_gather_no_grad(image_prefix)[neg_image]
            else:
                image_pool = model.image_prefix(all_gather_no_grad(images)[neg_image])
            text_pool, mask_pool = model.text_prefix(ids_all[neg_text], mask_all[neg_text]), mask_all[neg_text]
            neg_image = neg_text = torch.arange(ids.shape[0], device=ids.device)
        else:
            image_pool, text_pool, mask_pool = image_prefix, text_prefix, mask
        itm_image, itm_text, itm_mask, labels = itm_hard_negative_batch(
            image_prefix, text_prefix, mask, image_pool, text_pool, mask_pool, neg_text, neg_image)
        logits = model.itm_logits(model.fuse(None, None, itm_mask, image_prefix=itm_image, text_prefix=itm_text).cls_feats)
        acc = (logits.argmax(-1) == labels).float().mean().detach()
        return itm_loss(logits, labels), acc

    def _mlm(self, model, image_prefix, ids, mask) -> tuple[torch.Tensor, torch.Tensor]:
        special = torch.isin(ids, self.special_ids)
        masked, labels = mask_tokens(ids, self.mask_token_id, self.vocab_size, attention_mask=mask,
                                     special_tokens_mask=special, prob=self.objectives.mlm_prob)
        feats = model.fuse(None, masked, mask, image_prefix=image_prefix).text_feats
        chosen = labels != -100
        # The vocabulary projection only where a token was masked: B*T*V logits would dominate.
        logits = model.mlm_logits(feats[chosen]).float()
        targets = labels[chosen]
        loss = nn.functional.cross_entropy(logits, targets)
        return loss, (logits.argmax(-1) == targets).float().mean().detach()

    def on_step_end(self, model, step: int) -> None:
        clamp_temperature_(model.temperature)

"""Coarse-grained pre-training: ITC + ITM with global hard negatives + MLM (FIBER stage 1).

One training step, for a batch of B image-text pairs per rank:

1. dual encoder (no fusion): image and text embeddings -> ITC against every rank's pairs
   (gathered with gradient) and, optionally, a queue of past features;
2. for each image a negative text, and for each text a negative image, drawn from the softmax of
   the ITC similarities over the global batch, positives (and pairs of the same image or the
   same caption text) excluded;
   the fusion encoder scores the 3B pairs -> ITM cross-entropy;
3. 15 % of the text tokens masked 80/10/10 -> fusion encoder -> MLM cross-entropy.

The random draws of steps 2 and 3 are world-size invariant: they come from a generator seeded
alike on every rank from ``(seed, step count)``, are made for the global batch, and each rank
keeps its own rows; the MLM loss is normalised by the global count of masked tokens. Under DDP
(gradients averaged over ranks) N ranks of B pairs then draw the same negatives and masks, and
give the same loss and gradients, as one process with the N*B pairs (up to float rounding).

The batch is a dict with ``images [B, 3, H, W]``, ``input_ids [B, T]``, ``attention_mask [B, T]``
and optionally ``image_ids [B]`` (pairs sharing an image are never drawn as negatives). A model
with a frozen prefix may be given ``image_prefix [B, Hs, Ws, Cs]`` (cached, see
:mod:`fibervl.tasks.prefix_cache`) instead of ``images``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import nn

from ..engine.distributed import all_gather_no_grad, get_world_size, is_distributed, max_over_ranks
from .objectives import (
    FeatureQueue,
    clamp_temperature_,
    itc_logits,
    itm_hard_negative_batch,
    itm_loss,
    mask_tokens,
    match_score,
    masked_lm_logits,
    mlm_loss,
    same_text,
    sample_hard_negatives,
)
from .word_swaps import WordSwapTable


def pad_to_common_length(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``ids`` / ``mask [B, T]`` to the longest ``T`` over ranks (collective; unchanged
    in one process). A collator pads each rank's batch to its own longest text, but the gathers
    of the ITM negatives and MLM masks need one length. The added positions are masked (0): no
    real token attends to them and pooling skips them, so they change no output."""
    length = max_over_ranks(ids.shape[1], ids.device)
    if length == ids.shape[1]:
        return ids, mask
    pad = (0, length - ids.shape[1])
    return nn.functional.pad(ids, pad, value=0), nn.functional.pad(mask, pad, value=0)


@dataclass
class CoarseObjectives:
    """Weights of the three losses and their settings (the official recipe: all 1, no queue here).

    ``itm_negatives``: "hard" (official: drawn from the softmax of the ITC similarities) or
    "random" (uniform over the other pairs of the global batch). On templated, partial captions
    ("one shape", "a blue shape") a hard negative often describes the image too.

    ``itm_swap`` (weight, 0: off; not in the official recipe): for each caption that allows one,
    the ITM head must score (image, caption) above (image, the caption with two of its words
    swapped); ``swap_words`` are the groups whose members swap (``[[red, blue, green], [left,
    right]]``; :mod:`fibervl.tasks.word_swaps`). Logged as ``itm_swap`` (the pairwise logistic
    loss, averaged over the swapped captions of the global batch) and ``itm_swap_acc``.
    """

    itc: float = 1.0
    itm: float = 1.0
    mlm: float = 1.0
    mlm_prob: float = 0.15
    queue_size: int = 0
    itm_negatives: str = "hard"
    itm_swap: float = 0.0
    swap_words: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.itm_negatives not in ("hard", "random"):
            raise ValueError(f"objectives.itm_negatives must be 'hard' or 'random', got {self.itm_negatives!r}")
        if self.itm_swap < 0:
            raise ValueError(f"objectives.itm_swap must be >= 0, got {self.itm_swap}")
        if self.itm_swap and not self.itm:
            raise ValueError("objectives.itm_swap ranks each true caption above its swapped form by the ITM "
                             "scores of both: it needs objectives.itm > 0")
        if self.itm_swap and not self.swap_words:
            raise ValueError("objectives.itm_swap > 0 needs objectives.swap_words: the groups of words to swap, "
                             "e.g. [[red, blue, green], [left, right]]")

    def swap_table(self, tokenizer) -> WordSwapTable | None:
        """The token table of ``swap_words`` (None when ``itm_swap`` is off)."""
        return WordSwapTable.from_words(self.swap_words, tokenizer) if self.itm_swap else None


class CoarsePretrainTask(nn.Module):
    """The engine task for coarse pre-training. Its ITC queue (if any) and the count of steps taken
    (``sampling_steps``, which with ``seed`` seeds each step's negatives and masks) are
    checkpointed buffers."""

    def __init__(self, objectives: CoarseObjectives, embed_dim: int, vocab_size: int, mask_token_id: int,
                 special_token_ids: tuple[int, ...], seed: int = 0, swap_table: WordSwapTable | None = None) -> None:
        super().__init__()
        if objectives.itm_swap and swap_table is None:
            raise ValueError("objectives.itm_swap > 0: pass the task its swap_table (CoarseObjectives.swap_table)")
        self.objectives = objectives
        self.swap_table = swap_table
        self.vocab_size = vocab_size
        self.mask_token_id = mask_token_id
        self.seed = int(seed)
        self.register_buffer("special_ids", torch.tensor(sorted(set(special_token_ids)), dtype=torch.long), persistent=False)
        self.register_buffer("sampling_steps", torch.zeros((), dtype=torch.long))
        self.queue = FeatureQueue(embed_dim, objectives.queue_size) if objectives.queue_size else None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # a checkpoint written before the counter existed resumes with the counter at 0
        state_dict.setdefault(prefix + "sampling_steps", torch.zeros((), dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def step_generator(self, device: torch.device) -> torch.Generator:
        """A generator for this step's draws, seeded from ``(seed, sampling_steps)``; advances the count.

        Not the global RNG: the trainer seeds that with ``seed + rank``, and a rank drawing from it
        for its own rows draws other numbers than one process drawing for the whole batch. Every
        rank seeds this one alike and draws for the global batch (then keeps its rows), so the
        choices do not depend on the world size.
        """
        step = int(self.sampling_steps)
        self.sampling_steps.add_(1)
        digest = hashlib.sha256(f"{self.seed}:{step}".encode()).digest()
        return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)

    def training_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        images, ids, mask = batch.get("images"), batch["input_ids"], batch["attention_mask"]
        obj = self.objectives
        logs: dict[str, torch.Tensor] = {}
        generator = self.step_generator(ids.device)
        if obj.itm or obj.mlm:  # every rank's texts (these in one process), for negatives and masks
            ids, mask = pad_to_common_length(ids, mask)
            ids_all, mask_all = all_gather_no_grad(ids), all_gather_no_grad(mask)

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
            itm, itm_acc, match = self._itm(model, images, ids, mask, ids_all, mask_all, batch.get("image_ids"), itc,
                                            image_prefix, text_prefix, generator)
            loss = loss + obj.itm * itm
            logs.update(itm=itm.detach(), itm_acc=itm_acc)
        if obj.itm_swap:
            swap, swap_acc = self._itm_swap(model, image_prefix, ids, mask, ids_all, mask_all, itc.offset, generator,
                                            match)
            loss = loss + obj.itm_swap * swap
            logs.update(itm_swap=swap.detach(), itm_swap_acc=swap_acc)
        if obj.mlm:
            mlm, mlm_acc = self._mlm(model, image_prefix, ids, mask, ids_all, mask_all, itc.offset, generator)
            loss = loss + obj.mlm * mlm
            logs.update(mlm=mlm.detach(), mlm_acc=mlm_acc)
        if self.queue is not None:
            self.queue.enqueue_global(image_embed.detach().float(), text_embed.detach().float())
        logs["loss"] = loss
        return logs

    def _itm(self, model, images, ids, mask, ids_all, mask_all, image_ids, itc, image_prefix, text_prefix,
             generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, accuracy, the positive pairs' match scores [B]); ``images`` is None when the batch
        carried cached ``image_prefix`` instead."""
        n = itc.num_global
        # A pair whose caption is word for word another pair's is no negative for it: the text
        # is true of both images. Generic captions repeat often ("a picture of one shape": the
        # embedded set has 637 distinct among 1,500 test captions), and drawn as negatives they
        # teach ITM that true captions do not match (docs/results.md).
        exclude = same_text(ids, mask, ids_all, mask_all)
        if image_ids is not None:
            ids_global = all_gather_no_grad(image_ids)
            exclude = exclude | (image_ids[:, None] == ids_global[None, :])
        i2t, t2i = itc.logits_i2t[:, :n], itc.logits_t2i[:, :n]
        if self.objectives.itm_negatives == "random":  # equal logits: a uniform draw
            i2t, t2i = torch.zeros_like(i2t), torch.zeros_like(t2i)
        rows = dict(row_offset=itc.offset, total_rows=n)
        neg_text = sample_hard_negatives(i2t, itc.targets, generator, exclude, **rows)
        neg_image = sample_hard_negatives(t2i, itc.targets, generator, exclude, **rows)
        if is_distributed():
            # Negatives may live on other ranks: their prefixes are computed here from the
            # gathered inputs, so the gradient reaches the prefix layers through them too (a
            # cached image prefix is frozen: it is gathered as it is).
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
        return itm_loss(logits, labels), acc, match_score(logits[: ids.shape[0]])

    def _itm_swap(self, model, image_prefix, ids, mask, ids_all, mask_all, offset, generator, match
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's true caption against the caption with two words swapped: ``-log sigmoid(s_true
        - s_swapped)`` with ``s`` the ITM head's match score (``match [B]``: the positives' scores from
        :meth:`_itm`). A pairwise term: labelling the swapped pairs 0 on their own would teach the
        head to answer "no" (it already sees two negatives to each positive). The swaps are drawn for
        the global batch and this rank keeps its rows; the loss is a sum over them divided by the
        global count / world (as MLM's), so any world size gives one process's loss. Returns
        ``(loss, fraction of this rank's pairs ranked right)``; both 0 when no caption allows a swap."""
        swapped_all, group_all = self.swap_table.swap(ids_all, mask_all, generator)
        made_all = group_all >= 0
        num_made = made_all.sum()
        swapped, made = swapped_all[offset : offset + ids.shape[0]], made_all[offset : offset + ids.shape[0]]
        rows = made.nonzero().squeeze(1)
        if rows.numel() == 0:
            zero = torch.zeros((), device=ids.device)
            return zero, zero
        text_prefix = model.text_prefix(swapped.index_select(0, rows), mask.index_select(0, rows))
        fused = model.fuse(None, None, mask.index_select(0, rows), image_prefix=image_prefix.index_select(0, rows),
                           text_prefix=text_prefix)
        margin = match.index_select(0, rows) - match_score(model.itm_logits(fused.cls_feats))
        acc = (margin > 0).float().mean().detach()
        loss = -nn.functional.logsigmoid(margin).sum() * (get_world_size() / num_made.clamp(min=1))
        return loss, acc

    def _mlm(self, model, image_prefix, ids, mask, ids_all, mask_all, offset, generator) -> tuple[torch.Tensor, torch.Tensor]:
        # Masks drawn for the global batch, this rank's rows kept: the same tokens at any world size.
        special = torch.isin(ids_all, self.special_ids)
        masked, labels = mask_tokens(ids_all, self.mask_token_id, self.vocab_size, attention_mask=mask_all,
                                     special_tokens_mask=special, prob=self.objectives.mlm_prob, generator=generator)
        num_masked = (labels != -100).sum()
        masked, labels = masked[offset : offset + ids.shape[0]], labels[offset : offset + ids.shape[0]]
        feats = model.fuse(None, masked, mask, image_prefix=image_prefix).text_feats
        logits, targets = masked_lm_logits(model.mlm_logits, feats, labels)
        # Sum over this rank's tokens / (global count / world): DDP's average over ranks is then
        # the mean over every masked token, as in one process (a per-rank mean would weigh a
        # token by how few its rank happened to mask).
        loss = mlm_loss(logits, targets, reduction="sum") * (get_world_size() / num_masked.clamp(min=1))
        return loss, (logits.argmax(-1) == targets).float().mean().detach()

    def on_step_end(self, model, step: int) -> None:
        clamp_temperature_(model.temperature)

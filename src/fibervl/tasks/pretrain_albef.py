"""ALBEF pre-training: ITC with momentum distillation + ITM with hard negatives + MLM with
momentum distillation.

The task holds a *momentum model*, an exponential moving average of the model
(``param_m = m * param_m + (1 - m) * param`` after every optimizer step, m = 0.995), and queues
of its image and text embeddings. One training step for a batch of B pairs:

1. ITC. Rows: the model's embeddings of this batch; columns: the momentum embeddings of this
   batch followed by the queue. Targets: the one-hot positives mixed with the momentum model's
   own similarity distribution, ``alpha * softmax(sim_m) + (1 - alpha) * onehot``
   (:func:`distillation_targets`); loss = soft cross-entropy, averaged over both directions.
2. ITM. For each image a negative text and for each text a negative image, drawn in-batch from
   the softmax of the ITC similarities (:func:`~fibervl.tasks.objectives.sample_hard_negatives`);
   the fusion layers score the 3B pairs. The ViT tokens and text-only states of step 1 are
   reused (with gradient), as in ALBEF: nothing is encoded twice.
3. MLM. 15 % of the tokens masked 80/10/10; loss = ``(1 - alpha) * CE(onehot) + alpha *
   CE(momentum model's MLM distribution)`` over the masked positions.

The momentum embeddings of the batch are enqueued after the losses (oldest entries overwritten).
``alpha`` may ramp up linearly over ``alpha_warmup_steps`` (ALBEF: over the first epoch). The
batch: ``images [B, 3, S, S]``, ``input_ids`` / ``attention_mask [B, T]``, optionally
``image_ids [B]`` (captions of one image are never drawn as each other's ITM negatives; with
``image_id_positives`` they are also ITC positives within the batch).

Deliberate differences from the official code: the queue starts empty and only filled entries
are used (:class:`~fibervl.tasks.objectives.FeatureQueue`); no idx queue (same-image positives
are in-batch only); in DDP, hard negatives are drawn from the local batch, as ALBEF does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.precision import autocast_disabled
from .objectives import (
    FeatureQueue, clamp_temperature_, itm_hard_negative_batch, itm_loss, mask_tokens, masked_lm_logits, mlm_loss,
    same_text, sample_hard_negatives,
)

TEMPERATURE_RANGE = (0.001, 0.5)  # ALBEF's clamp


@dataclass
class AlbefObjectives:
    """Loss weights and settings (ALBEF: all weights 1, queue 65536, m 0.995, alpha 0.4)."""

    itc: float = 1.0
    itm: float = 1.0
    mlm: float = 1.0
    mlm_prob: float = 0.15
    queue_size: int = 4096
    momentum: float = 0.995
    alpha: float = 0.4
    alpha_warmup_steps: int = 0
    image_id_positives: bool = False


@torch.no_grad()
def momentum_update_(momentum_model: nn.Module, model: nn.Module, m: float) -> None:
    """``param_m = m * param_m + (1 - m) * param`` for every parameter, in place (buffers are
    not averaged: ALBEF averages parameters only). Parameters are matched by name."""
    params = dict(model.named_parameters())
    for name, pm in momentum_model.named_parameters():
        pm.mul_(m).add_(params[name].detach().to(pm.dtype), alpha=1.0 - m)


def distillation_targets(sim_m: torch.Tensor, hard_targets: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha * softmax(sim_m) + (1 - alpha) * hard_targets``: [N, C] each; rows sum to 1 when
    the rows of ``hard_targets`` do."""
    return alpha * sim_m.float().softmax(dim=1) + (1.0 - alpha) * hard_targets


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_c targets[c] * log_softmax(logits)[c]``: [N, C] each -> scalar."""
    return -(F.log_softmax(logits.float(), dim=1) * targets).sum(dim=1).mean()


@dataclass
class MomentumITC:
    """Result of :func:`momentum_itc`: ``sim_i2t`` / ``sim_t2i`` [B, B + Q] (columns: the batch's
    momentum embeddings, then the queue), their targets, the loss."""

    loss: torch.Tensor
    sim_i2t: torch.Tensor
    sim_t2i: torch.Tensor
    targets_i2t: torch.Tensor
    targets_t2i: torch.Tensor


def momentum_itc(image_feat: torch.Tensor, text_feat: torch.Tensor, image_feat_m: torch.Tensor,
                 text_feat_m: torch.Tensor, temperature: torch.Tensor | float, alpha: float,
                 queue: FeatureQueue | None = None, positives: torch.Tensor | None = None) -> MomentumITC:
    """ITC with momentum distillation.

    image_feat, text_feat: [B, E] L2-normalised (with gradient); image_feat_m, text_feat_m: [B, E]
    the momentum model's (no gradient); positives: optional [B, B] bool (True where column j of
    the batch is a positive of row i; default the diagonal), spread uniformly over each row.
    """
    b = image_feat.shape[0]
    img_m, txt_m = image_feat_m.detach().float(), text_feat_m.detach().float()
    if queue is not None:
        q_img, q_txt = queue.get()
        img_m = torch.cat([img_m, q_img.to(img_m)], dim=0)
        txt_m = torch.cat([txt_m, q_txt.to(txt_m)], dim=0)
    temp = temperature.float() if isinstance(temperature, torch.Tensor) else float(temperature)
    if positives is None:
        positives = torch.eye(b, dtype=torch.bool, device=image_feat.device)
    hard = torch.zeros(b, img_m.shape[0], device=image_feat.device)
    hard[:, :b] = positives.float()
    hard = hard / hard.sum(dim=1, keepdim=True)
    with autocast_disabled(image_feat.device):  # fp32 similarities: see autocast_disabled
        sim_i2t = image_feat.float() @ txt_m.t() / temp
        sim_t2i = text_feat.float() @ img_m.t() / temp
        with torch.no_grad():
            t = temp.detach() if isinstance(temp, torch.Tensor) else temp
            targets_i2t = distillation_targets(image_feat_m.float() @ txt_m.t() / t, hard, alpha)
            targets_t2i = distillation_targets(text_feat_m.float() @ img_m.t() / t, hard, alpha)
        loss = (soft_cross_entropy(sim_i2t, targets_i2t) + soft_cross_entropy(sim_t2i, targets_t2i)) / 2
    return MomentumITC(loss, sim_i2t, sim_t2i, targets_i2t, targets_t2i)


class AlbefPretrainTask(nn.Module):
    """The engine task. ``momentum_model`` (a frozen copy of ``model`` made here), the queue and
    the step count are its state, so the engine's checkpoints carry them and resume exactly."""

    def __init__(self, model: nn.Module, objectives: AlbefObjectives, special_token_ids: tuple[int, ...]) -> None:
        super().__init__()
        cfg = model.config
        self.objectives = objectives
        self.vocab_size = cfg.text.vocab_size
        self.mask_token_id = cfg.text.mask_token_id
        self.register_buffer("special_ids", torch.tensor(sorted(set(special_token_ids)), dtype=torch.long),
                             persistent=False)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.momentum_model = copy.deepcopy(model).requires_grad_(False)
        self.queue = FeatureQueue(cfg.embed_dim, objectives.queue_size) if objectives.queue_size else None

    def current_alpha(self) -> float:
        """The distillation weight now: ``alpha``, ramped up over ``alpha_warmup_steps``."""
        obj = self.objectives
        if obj.alpha_warmup_steps <= 0:
            return obj.alpha
        return obj.alpha * min(1.0, int(self.steps) / obj.alpha_warmup_steps)

    def training_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        images, ids, mask = batch["images"], batch["input_ids"], batch["attention_mask"]
        image_ids = batch.get("image_ids")
        obj = self.objectives
        alpha = self.current_alpha()
        mom = self.momentum_model

        image_tokens = model.image_tokens(images)
        text_hidden = model.text_hidden(ids, mask)
        image_feat = model.image_embed(image_tokens)
        text_feat = model.text_embed(text_hidden, mask)
        with torch.no_grad():
            image_tokens_m = mom.image_tokens(images)
            image_feat_m = mom.image_embed(image_tokens_m)
            text_feat_m = mom.text_embed(mom.text_hidden(ids, mask), mask)

        same_image = None if image_ids is None else image_ids[:, None] == image_ids[None, :]
        positives = same_image if obj.image_id_positives else None
        itc = momentum_itc(image_feat, text_feat, image_feat_m, text_feat_m, model.temperature, alpha,
                           self.queue, positives)
        loss = obj.itc * itc.loss
        logs: dict = {"itc": itc.loss.detach(), "temperature": model.temperature.detach(),
                                         "alpha": alpha}
        if obj.itm:
            # pairs of one image or of word-for-word equal captions are no negatives (as FIBER's)
            not_negative = same_text(ids, mask, ids, mask)
            not_negative = not_negative if same_image is None else not_negative | same_image
            itm, itm_acc = self._itm(model, image_tokens, text_hidden, mask, itc, not_negative)
            loss = loss + obj.itm * itm
            logs.update(itm=itm.detach(), itm_acc=itm_acc)
        if obj.mlm:
            mlm, mlm_acc = self._mlm(model, ids, mask, image_tokens, image_tokens_m, alpha)
            loss = loss + obj.mlm * mlm
            logs.update(mlm=mlm.detach(), mlm_acc=mlm_acc)
        if self.queue is not None:
            self.queue.enqueue_global(image_feat_m.float(), text_feat_m.float())
        logs["loss"] = loss
        return logs

    def _itm(self, model, image_tokens, text_hidden, mask, itc: MomentumITC, not_negative):
        b = image_tokens.shape[0]
        positive = torch.arange(b, device=image_tokens.device)
        neg_text = sample_hard_negatives(itc.sim_i2t[:, :b], positive, exclude=not_negative)
        neg_image = sample_hard_negatives(itc.sim_t2i[:, :b], positive, exclude=not_negative)
        itm_tokens, itm_text, itm_mask, labels = itm_hard_negative_batch(
            image_tokens, text_hidden, mask, image_tokens, text_hidden, mask, neg_text, neg_image)
        logits = model.itm_logits(model.fuse_features(itm_tokens, itm_text, itm_mask).cls_feats)
        return itm_loss(logits, labels), (logits.argmax(-1) == labels).float().mean().detach()

    def _mlm(self, model, ids, mask, image_tokens, image_tokens_m, alpha: float):
        special = torch.isin(ids, self.special_ids)
        masked, labels = mask_tokens(ids, self.mask_token_id, self.vocab_size, attention_mask=mask,
                                     special_tokens_mask=special, prob=self.objectives.mlm_prob)
        feats = model.fuse_features(image_tokens, model.text_hidden(masked, mask), mask).text_feats
        logits, targets = masked_lm_logits(model.mlm_logits, feats, labels)
        loss = mlm_loss(logits, targets)
        if alpha > 0:
            mom = self.momentum_model
            with torch.no_grad():
                feats_m = mom.fuse_features(image_tokens_m, mom.text_hidden(masked, mask), mask).text_feats
                soft = masked_lm_logits(mom.mlm_logits, feats_m, labels)[0].softmax(dim=-1)
            loss = (1.0 - alpha) * loss + alpha * soft_cross_entropy(logits, soft)
        return loss, (logits.argmax(-1) == targets).float().mean().detach()

    def on_step_end(self, model, step: int) -> None:
        momentum_update_(self.momentum_model, model, self.objectives.momentum)
        clamp_temperature_(model.temperature, *TEMPERATURE_RANGE)
        self.steps += 1

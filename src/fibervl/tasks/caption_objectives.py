"""Caption training objectives beyond maximum likelihood: CIDEr optimisation (SCST) and GOLD.

Both continue from an MLE captioner, as the official FIBER recipes do (``compute_caption_cider``
and ``compute_caption_gold``); :class:`~fibervl.tasks.caption.CaptionTask` picks one by
``caption.objective``.

**SCST** (self-critical sequence training, Rennie et al. 2017): for every image, ``k`` captions
are sampled from the model (:func:`~fibervl.tasks.decoding.sample`) and the greedy caption is
decoded; each sample's reward is its CIDEr-D against the image's training references, with IDF
from all training references (:class:`~fibervl.metrics.cider.CiderD`), and the greedy caption's
CIDEr-D is its baseline. The loss is ``-mean((r - b) * mean log p(sample))`` (REINFORCE with the
per-token mean log-probability, as the official code normalises by length), mixed with the MLE
loss: ``w * mle + (1 - w) * rl`` (the official alpha, w = 0.3). The official code differs in its
baseline: a constant CIDEr-D of 1 (100 as reported) instead of the greedy caption.

**GOLD** (Pang and He 2021, learning from demonstrations): the references are off-policy
demonstrations, each token's cross-entropy weighted by an importance weight from a frozen copy
of the model (refreshed every ``refresh_every`` optimizer steps: the official 1000). With p_t the
copy's probability of reference token t, the weight is ``max(p_t * mean(p_t .. p_end), u)``:
p_t approximates the per-token importance weight, the mean of the probabilities of the tokens
from t on is the return (the probability reward of the official code), and u = 0.1 lower-bounds
the product. The weighted sum is divided by the caption's token count and averaged over the
batch; the official code divides by the number of padding positions instead, which makes a
caption's weight depend on how much padding the batch has.
"""

from __future__ import annotations

import dataclasses

import torch

from ..metrics.cider import CiderD
from .decoding import DecodeConfig, generate, sample


def target_logprobs(model, image_tokens: torch.Tensor, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher-forced log-probabilities of every target token (position i predicts ``ids[:, i + 1]``).

    image_tokens [B, N, C] (:meth:`FiberModel.caption_image`); input_ids, attention_mask [B, T]
    (``<s> w1 .. </s>`` then padding). Returns (log p [B, T - 1] float32, 0 on padding; real
    [B, T - 1] bool, the targets that are real tokens; hit [N_real] bool, whether the arg-max
    is the target, for the real targets in order)."""
    feats = model.caption_features(image_tokens, input_ids, attention_mask)
    real = attention_mask[:, 1:].bool()
    # Only real targets go through the vocabulary projection (as caption_mle_loss).
    logp = torch.log_softmax(model.mlm_logits(feats[:, :-1][real]).float(), dim=-1)
    picked = logp.gather(1, input_ids[:, 1:][real][:, None]).squeeze(1)
    out = torch.zeros(real.shape, dtype=picked.dtype, device=picked.device)
    hit = logp.detach().argmax(-1) == input_ids[:, 1:][real]
    return out.masked_scatter(real, picked), real, hit


def sampled_sequences(tokens: torch.Tensor, bos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated ids [R, L] (EOS then PAD, or no EOS) -> teacher-forcing inputs ``<s> tokens``
    [R, L + 1] and their attention mask (1 up to and including EOS)."""
    ids = torch.cat([torch.full_like(tokens[:, :1], bos_id), tokens], dim=1)
    return ids, ids.ne(pad_id).long()


def _cut(row: list[int], eos_id: int) -> list[int]:
    return row[: row.index(eos_id)] if eos_id in row else row


def scst_loss(model, image_tokens: torch.Tensor, references: list[list[str]], tokenizer, cider: CiderD,
              num_samples: int, decode: DecodeConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The self-critical policy-gradient loss of a batch.

    image_tokens [B, N, C] (with grad: the loss reaches the image side through it);
    references: B lists of sentences; ``tokenizer``: ids -> text (``decode``) and the special
    ids. Sampling and the greedy baseline run in eval mode without grad. Returns (loss, logs:
    ``reward`` the samples' mean CIDEr-D, ``greedy_reward`` the baseline's)."""
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    banned = (tokenizer.mask_token_id,)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            frozen = image_tokens.detach()
            tokens = sample(model, frozen, num_samples, decode, bos, eos, pad, banned)
            greedy = generate(model, frozen, dataclasses.replace(decode, beam_size=1), bos, eos, pad, banned)
    finally:
        model.train(was_training)
    samples = [tokenizer.decode(_cut(row, eos)).strip() for row in tokens.tolist()]
    rewards = cider.scores(samples, [refs for refs in references for _ in range(num_samples)])
    baseline = cider.scores([tokenizer.decode(d.tokens).strip() for d in greedy], references)
    device = image_tokens.device
    advantage = (torch.tensor(rewards, device=device)
                 - torch.tensor(baseline, device=device).repeat_interleave(num_samples))
    ids, mask = sampled_sequences(tokens, bos, pad)
    logp, real, _ = target_logprobs(model, image_tokens.repeat_interleave(num_samples, dim=0), ids, mask)
    mean_logp = logp.sum(1) / real.sum(1).clamp(min=1)
    loss = -(advantage * mean_logp).mean()
    logs = {"reward": torch.tensor(sum(rewards) / len(rewards)), "greedy_reward": torch.tensor(sum(baseline) / len(baseline))}
    return loss, logs


def gold_weights(target_probs: torch.Tensor, real: torch.Tensor, min_weight: float = 0.1) -> torch.Tensor:
    """GOLD's per-token weights [B, T] from the behaviour model's probabilities of the reference
    tokens ``target_probs`` [B, T] and ``real`` [B, T] (bool, the real targets):
    ``max(p_t * mean_{s >= t, real} p_s, min_weight)`` on real targets, 0 on padding."""
    p = target_probs * real
    suffix_sum = p.flip(1).cumsum(1).flip(1)
    suffix_len = real.float().flip(1).cumsum(1).flip(1).clamp(min=1)
    return (p * suffix_sum / suffix_len).clamp(min=min_weight) * real


def gold_loss(model, behaviour, images: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              min_weight: float = 0.1, image_prefix: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GOLD loss of a batch of references: ``mean_b sum_t w_t * CE_t / tokens_b``, the
    weights :func:`gold_weights` of the frozen ``behaviour`` model (no grad flows to it or
    through the weights). Inputs as :func:`~fibervl.tasks.caption.caption_mle_loss`. Returns
    (loss, logs: ``gold_weight`` mean weight of the real tokens, ``mle`` the unweighted
    cross-entropy, ``token_acc``)."""
    logp, real, hit = target_logprobs(model, model.caption_image(images, image_prefix=image_prefix), input_ids,
                                      attention_mask)
    with torch.no_grad():
        old, _, _ = target_logprobs(behaviour, behaviour.caption_image(images, image_prefix=image_prefix), input_ids,
                                 attention_mask)
        weights = gold_weights(old.exp(), real, min_weight)
    tokens = real.sum(1).clamp(min=1)
    loss = ((-logp * weights).sum(1) / tokens).mean()
    return loss, {"gold_weight": weights[real].mean(), "mle": -logp[real].mean().detach(),
                  "token_acc": hit.float().mean()}

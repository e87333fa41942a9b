"""Coarse-grained pre-training objectives as pure functions (no model import).

* :func:`itc_loss` / :func:`itc_logits`: image-text contrastive loss (symmetric InfoNCE) over local
  rows and globally gathered columns, optionally extended by a :class:`FeatureQueue` of past
  features (the official FIBER recipe: 4096 detached entries, no momentum encoder).
* :func:`sample_hard_negatives`: one negative per row drawn from the softmax of the ITC logits
  with the positive excluded (VLMo-style global hard negatives for ITM); :func:`same_text` marks
  the pairs whose captions are the same tokens, which are no negatives for each other.
* :func:`itm_hard_negative_batch`: assembles the ``3 x B`` ITM batch and its labels.
* :func:`mask_tokens`: BERT masking (15 %, 80/10/10) for MLM.
* :func:`clamp_temperature_`: the official temperature clamp (init 0.07, range [0.001, 1]).

Shapes: ``B`` local batch, ``Bg`` global batch (all ranks), ``D`` embedding size, ``Q`` queue
entries, ``L`` text length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from fibervl.engine.distributed import all_gather_no_grad, all_gather_with_grad, get_rank, is_distributed
from fibervl.engine.precision import autocast_disabled

INIT_TEMPERATURE = 0.07
TEMPERATURE_RANGE = (0.001, 1.0)


@torch.no_grad()
def clamp_temperature_(temperature: torch.Tensor, min_value: float = TEMPERATURE_RANGE[0],
                       max_value: float = TEMPERATURE_RANGE[1]) -> torch.Tensor:
    """Clamp a learnable temperature in place (official: before every ITC computation).

    In place and outside autograd, as the official code does, so the parameter keeps receiving
    gradients while its value stays in ``[min_value, max_value]``. Returns the tensor.
    """
    return temperature.clamp_(min_value, max_value)


class FeatureQueue(nn.Module):
    """Ring buffer of past (detached) image and text embeddings, checkpointed as buffers.

    ``image`` and ``text``: ``[size, D]``; ``ptr``: next write position; ``count``: filled
    entries (``<= size``). Only filled entries are used as extra negatives. (The official code
    also uses the random initial contents of unfilled slots as negatives during the first
    ``size / Bg`` steps; using only real features is a deliberate difference.)
    In DDP, enqueue globally gathered features so every rank holds the same queue.
    """

    def __init__(self, dim: int, size: int = 4096):
        super().__init__()
        if size <= 0 or dim <= 0:
            raise ValueError(f"queue size and dim must be > 0, got size={size}, dim={dim}")
        self.size = int(size)
        self.register_buffer("image", torch.zeros(size, dim))
        self.register_buffer("text", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def get(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Filled entries, oldest first: ``([count, D], [count, D])`` (copies, safe to keep)."""
        n = int(self.count)
        if n < self.size:
            return self.image[:n].clone(), self.text[:n].clone()
        p = int(self.ptr)
        order = torch.cat([torch.arange(p, self.size), torch.arange(0, p)]).to(self.image.device)
        return self.image[order], self.text[order]

    @torch.no_grad()
    def enqueue(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
        """Append ``[N, D]`` features (detached), overwriting the oldest; keeps the last ``size``."""
        if image_emb.shape != text_emb.shape or image_emb.shape[1] != self.image.shape[1]:
            raise ValueError(f"expected two [N, {self.image.shape[1]}] tensors, got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
        img = image_emb.detach().to(self.image.dtype)[-self.size:]
        txt = text_emb.detach().to(self.text.dtype)[-self.size:]
        n = img.shape[0]
        p = int(self.ptr)
        idx = (torch.arange(n, device=self.image.device) + p) % self.size
        self.image[idx] = img
        self.text[idx] = txt
        self.ptr.fill_((p + n) % self.size)
        self.count.fill_(min(self.size, int(self.count) + n))

    @torch.no_grad()
    def enqueue_global(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
        """Gather ``[B, D]`` features from every rank (rank order) and enqueue them all.

        Collective in DDP (call on every rank); keeps the queues identical across ranks.
        """
        self.enqueue(all_gather_no_grad(image_emb.detach()), all_gather_no_grad(text_emb.detach()))


@dataclass
class ITCOutput:
    """Result of :func:`itc_logits`.

    ``logits_i2t``: ``[B, Bg + Q]`` local images vs all texts (global batch, then queue);
    ``logits_t2i``: ``[B, Bg + Q]`` local texts vs all images; ``targets``: ``[B]`` column of each
    row's positive (``offset + arange(B)``); ``num_global``: ``Bg``; ``offset``: this rank's first
    row in the global batch; ``loss``: scalar.
    """

    loss: torch.Tensor
    logits_i2t: torch.Tensor
    logits_t2i: torch.Tensor
    targets: torch.Tensor
    num_global: int
    offset: int = 0


def itc_logits(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    temperature: torch.Tensor | float,
    *,
    gather: bool = True,
    queue: Optional[FeatureQueue] = None,
    normalize: bool = False,
) -> ITCOutput:
    """Symmetric InfoNCE, rows = this rank's pairs, columns = every rank's pairs (+ queue).

    Args:
        image_emb, text_emb: ``[B, D]`` paired embeddings (row ``i`` of each is a positive pair).
            Expected L2-normalised unless ``normalize=True``.
        temperature: scalar (tensor with gradient, or float); logits are ``sim / temperature``.
            Clamp it first with :func:`clamp_temperature_`.
        gather: gather columns from all ranks with gradient (:func:`all_gather_with_grad`); a
            no-op in a single process.
        queue: extra negative columns from past steps (detached).
    Returns:
        :class:`ITCOutput`; ``loss = (CE(logits_i2t, targets) + CE(logits_t2i, targets)) / 2``,
        each cross-entropy averaged over the ``B`` local rows. Computed in fp32.
    """
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(f"expected two [B, D] tensors of one shape, got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
    img = image_emb.float()
    txt = text_emb.float()
    if normalize:
        img = F.normalize(img, dim=-1)
        txt = F.normalize(txt, dim=-1)
    b = img.shape[0]
    if gather and is_distributed():
        img_all = all_gather_with_grad(img)
        txt_all = all_gather_with_grad(txt)
        # ranks may have different B: this rank's rows start after the earlier ranks' rows
        sizes = all_gather_no_grad(torch.tensor([b], device=img.device))
        offset = int(sizes[: get_rank()].sum())
    else:
        img_all, txt_all, offset = img, txt, 0
    num_global = img_all.shape[0]
    if queue is not None:
        q_img, q_txt = queue.get()
        img_cols = torch.cat([img_all, q_img.to(img.device, img.dtype)], dim=0)
        txt_cols = torch.cat([txt_all, q_txt.to(txt.device, txt.dtype)], dim=0)
    else:
        img_cols, txt_cols = img_all, txt_all
    temp = temperature.float() if isinstance(temperature, torch.Tensor) else float(temperature)
    with autocast_disabled(img.device):  # fp32 similarities: see autocast_disabled
        logits_i2t = img @ txt_cols.t() / temp
        logits_t2i = txt @ img_cols.t() / temp
        targets = torch.arange(b, device=img.device) + offset
        loss = (F.cross_entropy(logits_i2t, targets) + F.cross_entropy(logits_t2i, targets)) / 2
    return ITCOutput(loss, logits_i2t, logits_t2i, targets, num_global, offset)


def itc_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    temperature: torch.Tensor | float,
    *,
    gather: bool = True,
    queue: Optional[FeatureQueue] = None,
    normalize: bool = False,
) -> torch.Tensor:
    """Scalar ITC loss; see :func:`itc_logits` for the arguments."""
    return itc_logits(image_emb, text_emb, temperature, gather=gather, queue=queue, normalize=normalize).loss


@torch.no_grad()
def sample_hard_negatives(
    logits: torch.Tensor,
    positive: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    exclude: Optional[torch.Tensor] = None,
    *,
    row_offset: int = 0,
    total_rows: Optional[int] = None,
) -> torch.Tensor:
    """Draw one negative column per row from ``softmax(logits[row])`` with the positive removed.

    Args:
        logits: ``[B, Bg]`` similarity logits (e.g. ``ITCOutput.logits_i2t[:, :num_global]`` to
            draw a negative *text* for each image). Only relative values matter.
        positive: ``[B]`` column of each row's positive (``ITCOutput.targets``).
        generator: torch generator on ``logits``' device, for reproducible draws.
        exclude: optional ``[B, Bg]`` bool, True for other columns not to draw (e.g. captions of
            the same image). A row whose every non-positive column is excluded falls back to
            all non-positive columns.
        row_offset, total_rows: ``logits`` are rows ``row_offset : row_offset + B`` of a
            ``[total_rows, Bg]`` matrix spread over ranks (default: the whole matrix). The noise
            is drawn for all ``total_rows`` rows and each rank keeps its own, so ranks whose
            generators are seeded alike choose exactly what one process would choose for the
            whole matrix, whatever the world size.
    Returns:
        ``[B]`` long column indices; never the positive. Sampling is exact (Gumbel-max), so a
        column is drawn with probability ``exp(l_j) / sum_{k != pos} exp(l_k)``; rows whose
        logits are all equal (or not finite) draw uniformly among the non-positive columns.
    Raises:
        ValueError if ``Bg < 2`` (no negative exists) or shapes disagree.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be [B, Bg], got {tuple(logits.shape)}")
    b, bg = logits.shape
    if bg < 2:
        raise ValueError("hard-negative sampling needs at least 2 columns (global batch >= 2)")
    positive = positive.to(logits.device).long()
    if positive.shape != (b,) or bool(((positive < 0) | (positive >= bg)).any()):
        raise ValueError(f"positive must be [B] indices in [0, {bg}), got {positive.tolist()}")
    total_rows = b if total_rows is None else total_rows
    if row_offset < 0 or row_offset + b > total_rows:
        raise ValueError(f"rows {row_offset}:{row_offset + b} are not inside a matrix of {total_rows} rows")
    rows = torch.arange(b, device=logits.device)
    is_pos = torch.zeros(b, bg, dtype=torch.bool, device=logits.device)
    is_pos[rows, positive] = True
    lg = logits.detach().float().clone()
    # non-finite logits carry no preference: treat the row as uniform
    bad_rows = ~torch.isfinite(lg).all(dim=1)
    lg[bad_rows] = 0.0
    blocked = is_pos.clone()
    if exclude is not None:
        if exclude.shape != logits.shape:
            raise ValueError(f"exclude must be {tuple(logits.shape)}, got {tuple(exclude.shape)}")
        candidate = exclude.to(logits.device).bool() | is_pos
        empty = candidate.all(dim=1)  # nothing left besides excluded columns: ignore exclusions
        candidate[empty] = is_pos[empty]
        blocked = candidate
    lg = lg.masked_fill(blocked, float("-inf"))
    u = torch.rand((total_rows, bg), generator=generator, device=lg.device, dtype=torch.float64)
    u = u[row_offset : row_offset + b]
    # Gumbel noise; clamping u keeps it finite so -inf stays the unique minimum
    tiny = torch.finfo(torch.float64).tiny
    gumbel = -torch.log(-torch.log(u.clamp(tiny, 1.0 - 1e-16)))
    choice = (lg.double() + gumbel).argmax(dim=1)
    assert not bool((choice == positive).any())
    return choice


def same_text(ids: torch.Tensor, mask: torch.Tensor, ids_all: torch.Tensor, mask_all: torch.Tensor) -> torch.Tensor:
    """[B, T] token ids and masks of this rank, [Bg, T] of all ranks -> [B, Bg] bool, True where
    text i and text j are the same tokens (padding ignored)."""
    mine = ids.masked_fill(~mask.bool(), -1)
    every = ids_all.masked_fill(~mask_all.bool(), -1)
    return (mine[:, None, :] == every[None, :, :]).all(dim=-1)


def itm_hard_negative_batch(
    image: torch.Tensor,
    text_ids: torch.Tensor,
    text_mask: torch.Tensor,
    image_all: torch.Tensor,
    text_ids_all: torch.Tensor,
    text_mask_all: torch.Tensor,
    neg_text_idx: torch.Tensor,
    neg_image_idx: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Build the ``3B`` ITM batch: positives, (image, hard-negative text), (hard-negative image, text).

    Args:
        image ``[B, ...]``, text_ids / text_mask ``[B, L]``: this rank's pairs.
        image_all ``[Bg, ...]``, text_ids_all / text_mask_all ``[Bg, L]``: the global batch
            (:func:`~fibervl.engine.distributed.all_gather_no_grad`; texts padded to one ``L``).
        neg_text_idx ``[B]``: for each image, a column of the global batch
            (:func:`sample_hard_negatives` on ``logits_i2t``); neg_image_idx ``[B]`` likewise
            for each text (on ``logits_t2i``).
    Returns:
        ``(images [3B, ...], text_ids [3B, L], text_mask [3B, L], labels [3B])`` in the official
        order: images ``[img, img, img_neg]``, texts ``[txt, txt_neg, txt]``, labels
        ``[1]*B + [0]*2B`` (long).
    """
    b = image.shape[0]
    if text_ids.shape[1] != text_ids_all.shape[1]:
        raise ValueError("local and global text ids must be padded to the same length")
    # index_select, not x[idx]: negatives repeat rows (and are the prefixes of positives too), and
    # the backward of x[idx] (an accumulating index_put_) sums repeated rows in a thread-dependent
    # order on CPU: two identical coarse steps gave gradients differing in the last bits.
    img_neg = image_all.index_select(0, neg_image_idx.to(image_all.device))
    ids_neg = text_ids_all.index_select(0, neg_text_idx.to(text_ids_all.device))
    mask_neg = text_mask_all.index_select(0, neg_text_idx.to(text_mask_all.device))
    images = torch.cat([image, image, img_neg], dim=0)
    ids = torch.cat([text_ids, ids_neg, text_ids], dim=0)
    mask = torch.cat([text_mask, mask_neg, text_mask], dim=0)
    labels = torch.cat([torch.ones(b, dtype=torch.long), torch.zeros(2 * b, dtype=torch.long)]).to(image.device)
    return images, ids, mask, labels


def mask_tokens(
    input_ids: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    *,
    attention_mask: Optional[torch.Tensor] = None,
    special_tokens_mask: Optional[torch.Tensor] = None,
    prob: float = 0.15,
    generator: Optional[torch.Generator] = None,
    ensure_one: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking for MLM.

    Each maskable token is selected with probability ``prob``; a selected token becomes
    ``mask_token_id`` with probability 0.8, a uniformly random id in ``[0, vocab_size)`` with
    0.1, and stays unchanged with 0.1 (the HuggingFace ``DataCollatorForLanguageModeling``
    recipe the official code uses). Padding (``attention_mask == 0``) and special tokens
    (``special_tokens_mask == True``: CLS/BOS, SEP/EOS, PAD...) are never selected.

    ``ensure_one``: a sequence with at least one maskable token but none selected gets one
    maskable token (chosen uniformly) selected. This keeps every sequence contributing to the
    loss and avoids a NaN loss on a batch of short captions with no selected token; it raises
    the expected rate slightly for short sequences (e.g. from 15 % to ~16 % at 12 maskable
    tokens). Set False for the exact Bernoulli rate.

    Args:
        input_ids: ``[B, L]`` long.
    Returns:
        ``(masked_ids [B, L], labels [B, L])``; labels hold the original id at selected
        positions and -100 elsewhere.
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, L], got {tuple(input_ids.shape)}")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    device = input_ids.device
    maskable = torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask is not None:
        maskable &= attention_mask.to(device).bool()
    if special_tokens_mask is not None:
        maskable &= ~special_tokens_mask.to(device).bool()

    def rand(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=device)

    selected = (rand(tuple(input_ids.shape)) < prob) & maskable
    if ensure_one and prob > 0:
        need = maskable.any(dim=1) & ~selected.any(dim=1)
        if bool(need.any()):
            # uniform choice among maskable positions: argmax of random scores on them
            scores = rand(tuple(input_ids.shape)).masked_fill(~maskable, -1.0)
            pick = scores.argmax(dim=1)
            rows = need.nonzero(as_tuple=True)[0]
            selected[rows, pick[rows]] = True
    labels = input_ids.masked_fill(~selected, -100)
    r = rand(tuple(input_ids.shape))
    to_mask = selected & (r < 0.8)
    to_random = selected & (r >= 0.8) & (r < 0.9)
    random_ids = torch.randint(0, vocab_size, tuple(input_ids.shape), generator=generator, device=device,
                               dtype=input_ids.dtype)
    masked = input_ids.clone()
    masked[to_mask] = mask_token_id
    masked[to_random] = random_ids[to_random]
    return masked, labels


def masked_lm_logits(mlm_head, text_feats: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The MLM head's fp32 logits at the masked positions and the tokens to predict there:
    ``text_feats [B, T, H]``, ``labels [B, T]`` (-100 where nothing was masked, as
    :func:`mask_tokens` gives them) -> ``logits [M, V]``, ``targets [M]``. ``mlm_head``:
    ``model.mlm_logits``. The vocabulary projection runs only where a token was masked: B*T*V
    logits would dominate the step."""
    chosen = labels != -100
    return mlm_head(text_feats[chosen]).float(), labels[chosen]


def mlm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of masked-token logits ``[M, V]`` against their tokens ``[M]`` (see
    :func:`masked_lm_logits`); ``reduction`` "mean" (over the M tokens) or "sum"."""
    return F.cross_entropy(logits, targets, reduction=reduction)


def match_score(logits: torch.Tensor) -> torch.Tensor:
    """ITM logits ``[N, 2]`` -> ``[N]`` log-odds of a match (float32)."""
    logits = logits.float()
    return logits[:, 1] - logits[:, 0]


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ITM logits ``[N, 2]`` against labels ``[N]`` (1 = matched)."""
    return F.cross_entropy(logits.float(), labels.long())


__all__ = [
    "INIT_TEMPERATURE", "TEMPERATURE_RANGE", "clamp_temperature_", "FeatureQueue", "ITCOutput",
    "itc_logits", "itc_loss", "sample_hard_negatives", "same_text", "itm_hard_negative_batch", "mask_tokens",
    "masked_lm_logits", "mlm_loss", "itm_loss", "match_score",
]

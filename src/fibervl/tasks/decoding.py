"""Caption decoding: greedy and beam search, and sampling, with a key/value cache or by recomputation.

Both decoders start every caption with ``bos_id`` and stop a caption at ``eos_id`` or after
``max_length`` generated tokens. ``use_cache=True`` feeds one new token per step through
:meth:`FiberModel.caption_step` (the t2i keys/values of the image are computed once, the past
tokens' self-attention keys/values are cached); ``use_cache=False`` recomputes the whole prefix
with :meth:`FiberModel.caption_features` at every step, as the official decoder does. Both give
the same captions (tests/tasks/test_caption.py); the image encoder runs once per image in both.

Beam search keeps ``beam_size`` running hypotheses per image; a hypothesis that emits EOS is
finished with the length-normalised score ``sum log p / length ** length_penalty`` (length =
generated tokens, EOS included): the length-normalised score of the official decoder, in the
Hugging Face beam-search form. An image is done once it has ``beam_size`` finished hypotheses and its best
running beam, normalised at its current length, does not beat the worst of them; at
``max_length`` the running beams are finished as they are.

:func:`sample` draws captions token by token from the model's distribution (multinomial
sampling, several per image, with the same bans): the exploration of CIDEr optimisation
(:mod:`fibervl.tasks.caption_objectives`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class DecodeConfig:
    """``beam_size`` 1 = greedy. ``max_length``: generated tokens (EOS included), ``<s>`` not
    counted. ``banned_ids``: token ids never generated (the decoder also bans BOS, PAD and the
    mask token it is given). ``min_length``: EOS is banned before this many tokens."""

    beam_size: int = 1
    max_length: int = 20
    min_length: int = 0
    length_penalty: float = 1.0
    banned_ids: tuple[int, ...] = ()
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")


@dataclass
class Decoded:
    """One caption per image: ``tokens`` (generated ids, no BOS, no EOS), ``score`` (greedy: sum of
    log-probabilities; beam: the length-normalised score) and whether EOS ended it."""

    tokens: list[int]
    score: float
    finished: bool = True
    extra: dict = field(default_factory=dict)


class _Stepper:
    """Next-token log-probabilities for a growing batch of prefixes, cached or recomputed."""

    def __init__(self, model, image_tokens: torch.Tensor, bos_id: int, use_cache: bool) -> None:
        self.model, self.use_cache = model, use_cache
        self.image_tokens = image_tokens
        b = image_tokens.shape[0]
        self.prefix = torch.full((b, 1), bos_id, dtype=torch.long, device=image_tokens.device)
        self.cache = model.start_caption(image_tokens) if use_cache else None
        self.pending = self.prefix  # tokens not yet fed to the cache

    def logprobs(self) -> torch.Tensor:
        """[R, V] float32 log-probabilities of the next token of every row's prefix."""
        if self.use_cache:
            logits, self.cache = self.model.caption_step(self.pending, self.cache)
        else:
            feats = self.model.caption_features(self.image_tokens, self.prefix)
            logits = self.model.mlm_logits(feats[:, -1])
        return torch.log_softmax(logits.float(), dim=-1)

    def advance(self, rows: torch.Tensor, tokens: torch.Tensor, same_images: bool) -> None:
        """Keep prefix rows ``rows`` [R'] (reordering) and append ``tokens`` [R']."""
        self.prefix = torch.cat([self.prefix.index_select(0, rows), tokens[:, None]], dim=1)
        self.pending = tokens[:, None]
        if self.use_cache:
            self.cache = self.cache.index_select(rows, same_images=same_images)
        else:
            self.image_tokens = self.image_tokens.index_select(0, rows) if not same_images else self.image_tokens


def _ban(logprobs: torch.Tensor, banned: torch.Tensor, eos_id: int, ban_eos: bool) -> torch.Tensor:
    logprobs = logprobs.clone()
    logprobs[:, banned] = float("-inf")
    if ban_eos:
        logprobs[:, eos_id] = float("-inf")
    return logprobs


def _banned_ids(cfg: DecodeConfig, bos_id: int, eos_id: int, pad_id: int, extra_banned: tuple[int, ...],
                device: torch.device) -> torch.Tensor:
    banned = sorted({bos_id, pad_id, *extra_banned, *cfg.banned_ids} - {eos_id})
    return torch.tensor(banned, dtype=torch.long, device=device)


@torch.no_grad()
def generate(model, image_tokens: torch.Tensor, cfg: DecodeConfig, bos_id: int, eos_id: int,
             pad_id: int, extra_banned: tuple[int, ...] = ()) -> list[Decoded]:
    """Captions for ``image_tokens`` [B, N, C] (:meth:`FiberModel.caption_image`): B results.

    ``extra_banned``: more ids never generated (e.g. the tokenizer's mask token).
    """
    banned_t = _banned_ids(cfg, bos_id, eos_id, pad_id, extra_banned, image_tokens.device)
    if cfg.beam_size == 1:
        return _greedy(model, image_tokens, cfg, bos_id, eos_id, pad_id, banned_t)
    return _beam(model, image_tokens, cfg, bos_id, eos_id, banned_t)


def _greedy(model, image_tokens, cfg, bos_id, eos_id, pad_id, banned) -> list[Decoded]:
    b = image_tokens.shape[0]
    step = _Stepper(model, image_tokens, bos_id, cfg.use_cache)
    done = torch.zeros(b, dtype=torch.bool, device=image_tokens.device)
    scores = torch.zeros(b, dtype=torch.float32, device=image_tokens.device)
    tokens: list[torch.Tensor] = []
    keep = torch.arange(b, device=image_tokens.device)
    for t in range(cfg.max_length):
        lp = _ban(step.logprobs(), banned, eos_id, ban_eos=t < cfg.min_length)
        best, nxt = lp.max(dim=-1)
        # Finished rows keep running (batch shapes stay fixed) but take PAD and score nothing.
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        scores = scores + torch.where(done, torch.zeros_like(best), best)
        tokens.append(nxt)
        done = done | nxt.eq(eos_id)
        if bool(done.all()):
            break
        step.advance(keep, nxt, same_images=True)
    out = []
    seq = torch.stack(tokens, dim=1).tolist()
    for row, score in zip(seq, scores.tolist()):
        finished = eos_id in row
        row = row[: row.index(eos_id)] if finished else row
        out.append(Decoded(row, score, finished))
    return out


@torch.no_grad()
def sample(model, image_tokens: torch.Tensor, num_samples: int, cfg: DecodeConfig, bos_id: int, eos_id: int,
           pad_id: int, extra_banned: tuple[int, ...] = (), generator: torch.Generator | None = None) -> torch.Tensor:
    """``num_samples`` captions per image of ``image_tokens`` [B, N, C], each token drawn from the
    model's next-token distribution (temperature 1) after the decoder's bans (BOS, PAD,
    ``extra_banned``, ``cfg.banned_ids``; EOS before ``cfg.min_length``). ``cfg.beam_size`` is
    not used.

    Returns generated ids [B * num_samples, L], L <= ``cfg.max_length``: image i's samples are
    rows i * num_samples .. (i + 1) * num_samples - 1; a row ends with its EOS and PAD after it,
    or runs to L without EOS when the length limit stopped it.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    device = image_tokens.device
    banned = _banned_ids(cfg, bos_id, eos_id, pad_id, extra_banned, device)
    rows = image_tokens.shape[0] * num_samples
    step = _Stepper(model, image_tokens.repeat_interleave(num_samples, dim=0), bos_id, cfg.use_cache)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    keep = torch.arange(rows, device=device)
    tokens: list[torch.Tensor] = []
    for t in range(cfg.max_length):
        probs = _ban(step.logprobs(), banned, eos_id, ban_eos=t < cfg.min_length).exp()
        nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        tokens.append(nxt)
        done = done | nxt.eq(eos_id)
        if bool(done.all()):
            break
        step.advance(keep, nxt, same_images=True)
    return torch.stack(tokens, dim=1)


def _beam(model, image_tokens, cfg, bos_id, eos_id, banned) -> list[Decoded]:
    b, k = image_tokens.shape[0], cfg.beam_size
    device = image_tokens.device
    step = _Stepper(model, image_tokens.repeat_interleave(k, dim=0), bos_id, cfg.use_cache)
    # Only the first beam of each image is live at first, so the first step does not pick
    # the same token k times.
    beam_scores = torch.full((b, k), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0
    seqs: list[list[list[int]]] = [[[] for _ in range(k)] for _ in range(b)]
    finished: list[list[tuple[float, list[int], bool]]] = [[] for _ in range(b)]
    done = [False] * b
    lp_pow = cfg.length_penalty

    def add(i: int, score_sum: float, tokens: list[int], eos: bool) -> None:
        hyps = finished[i]
        hyps.append((score_sum / max(1, len(tokens) + eos) ** lp_pow, tokens, eos))
        hyps.sort(key=lambda h: -h[0])
        del hyps[k:]

    for t in range(cfg.max_length):
        lp = _ban(step.logprobs(), banned, eos_id, ban_eos=t < cfg.min_length)  # [B*k, V]
        v = lp.shape[-1]
        cand = (beam_scores.view(-1, 1) + lp).view(b, k * v)
        top_scores, top_idx = cand.topk(2 * k, dim=1)
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
        rows, next_tokens, next_scores, next_seqs = [], [], [], []
        for i in range(b):
            if done[i]:
                # A done image keeps k placeholder beams (never read again) so shapes stay fixed.
                rows += [i * k] * k
                next_tokens += [eos_id] * k
                next_scores += [float("-inf")] * k
                next_seqs.append([[] for _ in range(k)])
                continue
            chosen: list[tuple[int, int, float]] = []
            for rank, (score, idx) in enumerate(zip(top_scores[i], top_idx[i])):
                if score == float("-inf"):
                    break
                beam, token = divmod(idx, v)
                if token == eos_id:
                    # Only an EOS ranked in the top k finishes a hypothesis (as Hugging Face's).
                    if rank < k:
                        add(i, score, seqs[i][beam], True)
                    continue
                chosen.append((beam, token, score))
                if len(chosen) == k:
                    break
            while len(chosen) < k:  # fewer live candidates than beams (tiny vocabularies)
                chosen.append((0, eos_id, float("-inf")))
            rows += [i * k + beam for beam, _, _ in chosen]
            next_tokens += [token for _, token, _ in chosen]
            next_scores += [score for _, _, score in chosen]
            next_seqs.append([seqs[i][beam] + [token] for beam, token, _ in chosen])
            # Done when k hypotheses are finished and the best live beam, normalised at its
            # current length, does not beat the worst of them (Hugging Face's early_stopping=False
            # rule).
            best_live = max(score for _, _, score in chosen)
            if len(finished[i]) == k and best_live / (t + 1) ** lp_pow <= finished[i][-1][0]:
                done[i] = True
        seqs = next_seqs
        beam_scores = torch.tensor(next_scores, device=device).view(b, k)
        if all(done):
            break
        rows_t = torch.tensor(rows, dtype=torch.long, device=device)
        step.advance(rows_t, torch.tensor(next_tokens, dtype=torch.long, device=device), same_images=True)
    for i in range(b):
        if not done[i]:
            for beam in range(k):
                score = float(beam_scores[i, beam])
                if score != float("-inf"):
                    add(i, score, seqs[i][beam], False)
    out = []
    for i in range(b):
        score, tokens, eos = finished[i][0]
        out.append(Decoded(list(tokens), score, eos))
    return out

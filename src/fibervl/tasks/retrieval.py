"""Image-text retrieval: the dual encoder (ITC), the fusion encoder (ITM), and re-ranking.

- dual encoder: O(n + m) encoder passes for n images and m texts, then one matrix product
  (:func:`embed_images`, :func:`embed_texts`); candidate search optionally with FAISS
  (:func:`topk_candidates`, ``faiss`` imported only when asked for);
- fusion encoder: one fused pass per (image, text) pair, so only for a shortlist
  (:func:`itm_pair_scores`);
- re-ranking (:func:`rerank_scores`): for every query the dual encoder's top ``k`` gallery items
  are re-scored with ``score = s_itc + w * s_itm`` where ``s_itc = <e_image, e_text>`` (the cosine
  similarity of the normalised embeddings: the official code's ITC retrieval score, which
  ALBEF's re-ranking adds to the ITM score too) and ``s_itm = itm_logit[match] -
  itm_logit[no match]`` (the ITM log-odds); items outside the top ``k`` keep their ITC order
  below every candidate. ``k`` >= the gallery size is the full ITC + ITM ensemble (n * m fused
  passes: small galleries only).

  Why not the ITC logit (cosine / temperature, about 12x the cosine): on that scale ITC outweighs
  ITM in every re-ranked list, and a trained ITM moved few of them (docs/results.md).

  ``w`` (``itm_weight``, default 1) sets how far ITM may overrule ITC. The two scores' spreads
  are a property of the trained model (for fiber-tiny the log-odds of the top-k pairs spread
  about 25x wider than their cosines), so :func:`choose_itm_weight` picks ``w`` on a validation
  split from :data:`ITM_WEIGHTS`, the best mean R@1 of both directions.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..data import Processor, Sample, Tokenizer
from ..data.transforms import eval_transforms
from ..metrics.baselines import chance_recall
from ..metrics.retrieval import retrieval_recall
from ..engine import distributed as D
from ..engine.precision import eval_autocast
from ..engine.progress import progress


# Images and texts a batch when a split is embedded (evaluation splits them across processes in these batches).
EMBED_IMAGE_BATCH, EMBED_TEXT_BATCH = 64, 256

# The ITM weights :func:`choose_itm_weight` tries: 0 (the ITC order kept) up to 1 (ITM decides
# wherever its log-odds differ by more than the cosines).
ITM_WEIGHTS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0)


def _stack_images(items):
    return torch.stack([item.pixel_values for item in items])


@torch.no_grad()
def embed_images(model, paths: list[Path], image_size: int, batch_size: int = 64, num_workers: int = 0,
                 bf16: bool = False) -> torch.Tensor:
    """[I, H] L2-normalised ITC image embeddings of the images at ``paths``, on the CPU (where
    the score matrix, FAISS and the recall read them)."""
    processor = Processor(eval_transforms(image_size))
    samples = [Sample(sample_id=str(p), image_id=i, image_path=Path(p)) for i, p in enumerate(paths)]
    loader = DataLoader(samples, batch_size=batch_size, num_workers=num_workers,
                        collate_fn=lambda batch: _stack_images([processor(s) for s in batch]))
    device = next(model.parameters()).device
    out = []
    for images in progress(loader, "image embeddings"):
        with eval_autocast(device, bf16):
            out.append(model.encode_image(images.to(device)).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def embed_texts(model, tokenizer: Tokenizer, texts: list[str], max_length: int, batch_size: int = 256,
                bf16: bool = False) -> torch.Tensor:
    """[T, H] L2-normalised ITC text embeddings, on the CPU."""
    device = next(model.parameters()).device
    out = []
    for start in progress(range(0, len(texts), batch_size), "text embeddings"):
        tokens = tokenizer(texts[start:start + batch_size], max_length=max_length, padding="longest")
        with eval_autocast(device, bf16):
            out.append(model.encode_text(tokens.input_ids.to(device), tokens.attention_mask.to(device)).float().cpu())
    return torch.cat(out)


def _limit(reader, limit: int):
    """(paths, texts, text_to_image) of the first ``limit`` images (0 = all) and their texts."""
    paths, texts, text_to_image, image_to_texts = reader.retrieval_lists()
    if limit:
        paths, image_to_texts = paths[:limit], image_to_texts[:limit]
        keep = [t for ts in image_to_texts for t in ts]
        texts = [texts[t] for t in keep]
        text_to_image = [text_to_image[t] for t in keep]
    return paths, texts, text_to_image


def _embed_split(model, tokenizer: Tokenizer, paths, texts, image_size: int, max_length: int,
                 bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """ITC embeddings of a split's images [I, H] and texts [T, H], in eval mode (restored after).
    Under torchrun each process embeds its share of the images and of the texts (whole batches
    of the one process: :func:`~fibervl.engine.distributed.rank_share`) and every process
    returns them all, in order (collective: call it on every rank)."""
    paths_share, texts_share = D.rank_share(paths, EMBED_IMAGE_BATCH), D.rank_share(texts, EMBED_TEXT_BATCH)
    if D.is_distributed():
        print(f"Retrieval evaluation: rank {D.get_rank()} of {D.get_world_size()} embeds {len(paths_share)} of "
              f"{len(paths)} images and {len(texts_share)} of {len(texts)} texts", file=sys.stderr)
    was_training = model.training
    model.eval()
    try:
        # a rank with no share (more ranks than items) embeds nothing
        images = (embed_images(model, paths_share, image_size, EMBED_IMAGE_BATCH, bf16=bf16) if paths_share
                  else torch.zeros(0))
        text = (embed_texts(model, tokenizer, texts_share, max_length, EMBED_TEXT_BATCH, bf16=bf16) if texts_share
                else torch.zeros(0))
    finally:
        model.train(was_training)
    return (D.gather_share_rows(images, len(paths), EMBED_IMAGE_BATCH),
            D.gather_share_rows(text, len(texts), EMBED_TEXT_BATCH))


def load_image_tensors(paths: list[Path], image_size: int) -> torch.Tensor:
    """[I, 3, S, S] evaluation-transformed images (for the fused passes of re-ranking)."""
    processor = Processor(eval_transforms(image_size))
    return torch.stack([processor(Sample(sample_id=str(p), image_id=i, image_path=Path(p))).pixel_values
                        for i, p in enumerate(paths)])


def topk_candidates(queries: torch.Tensor, gallery: torch.Tensor, k: int, use_faiss: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inner-product top-k: queries [Q, H], gallery [G, H] -> (scores [Q, k'], indices [Q, k'])
    with k' = min(k, G). ``use_faiss``: an exact FAISS inner-product index (``pip install
    faiss-cpu``) instead of the dense [Q, G] product, for galleries too large for memory."""
    k = min(k, gallery.shape[0])
    if not use_faiss:
        return (queries @ gallery.t()).topk(k, dim=1)
    try:
        import faiss
    except ImportError:
        raise RuntimeError("retrieval with faiss=true needs the faiss package (pip install faiss-cpu)") from None
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(gallery.float().contiguous().numpy())
    scores, idx = index.search(queries.float().contiguous().numpy(), k)
    return torch.from_numpy(scores), torch.from_numpy(idx).long()


@torch.no_grad()
def itm_pair_scores(model, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    pairs: torch.Tensor, batch_size: int = 64, bf16: bool = False) -> torch.Tensor:
    """ITM log-odds (match logit minus no-match logit) of (image, text) pairs.

    images [I, 3, S, S]; input_ids / attention_mask [T, L]; pairs [P, 2] (image index, text
    index) -> [P] float32 on the CPU. The unfused prefixes are computed once for each image and
    text the pairs use (``model.image_prefix`` / ``text_prefix``), however many pairs it is in;
    then :func:`itm_prefix_pair_scores`. Inputs and prefixes stay on the CPU; each batch goes to
    the model's device.
    """
    device = next(model.parameters()).device
    pairs = pairs.cpu()
    if pairs.shape[0] == 0:
        return torch.zeros(0)
    used_images, image_row = pairs[:, 0].unique(return_inverse=True)
    used_texts, text_row = pairs[:, 1].unique(return_inverse=True)
    with eval_autocast(device, bf16):
        image_prefix = torch.cat([model.image_prefix(images[c].to(device)).cpu() for c in used_images.split(batch_size)])
        text_prefix = torch.cat([model.text_prefix(input_ids[c].to(device), attention_mask[c].to(device)).cpu()
                                 for c in used_texts.split(batch_size)])
    return itm_prefix_pair_scores(model, image_prefix, text_prefix, attention_mask[used_texts],
                                  torch.stack([image_row, text_row], dim=1), batch_size, bf16)


@torch.no_grad()
def itm_prefix_pair_scores(model, image_prefixes: torch.Tensor, text_prefixes: torch.Tensor,
                           attention_mask: torch.Tensor, pairs: torch.Tensor, batch_size: int = 64,
                           bf16: bool = False) -> torch.Tensor:
    """ITM log-odds of (image, text) pairs from stored prefixes: image_prefixes [I, Hs, Ws, Cs],
    text_prefixes [T, L, D] and attention_mask [T, L] (in any dtype, in memory or memory-mapped:
    :mod:`fibervl.tasks.gallery`), pairs [P, 2] -> [P] float32 on the CPU. One fused pass per
    pair, ``batch_size`` pairs at a time; only the rows a batch uses are read."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype  # stored bf16 prefixes enter an fp32 model as fp32
    pairs = pairs.cpu()
    out = []
    for start in progress(range(0, pairs.shape[0], batch_size), "image-text pairs"):
        images, texts = pairs[start:start + batch_size].unbind(1)
        mask = attention_mask[texts]
        length = int(mask.sum(1).max())  # drop the columns that are padding for every text here
        with eval_autocast(device, bf16):
            cls = model.fuse(None, None, mask[:, :length].to(device),
                             image_prefix=image_prefixes[images].to(device, dtype),
                             text_prefix=text_prefixes[texts, :length].to(device, dtype)).cls_feats
            logits = model.itm_logits(cls).float()
        out.append((logits[:, 1] - logits[:, 0]).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def rerank_scores(itc: torch.Tensor, pair_scorer, k: int,
                  candidates: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-rank the ITC top-k of every query with ``itc + itm`` (``pair_scorer`` may weigh ITM: :func:`weighted`).

    itc: [I, T] ITC scores (cosine similarities, see the module docstring); pair_scorer: ``f(pairs [P, 2]) -> [P]`` ITM scores of (image,
    text) pairs; candidates: optional (texts of each image [I, k], images of each text [T, k])
    found elsewhere (e.g. :func:`topk_candidates` with FAISS), default the top-k of ``itc``.
    Returns (i2t [I, T], t2i [I, T]) score matrices: in the i2t one each image row ranks its
    top-k texts by ``itc + itm``, above every other text (kept in ITC order); t2i likewise per
    text column. Each pair is scored once even when it is a candidate both ways.
    """
    n_images, n_texts = itc.shape
    if candidates is None:
        candidates = (itc.topk(min(k, n_texts), dim=1).indices, itc.t().topk(min(k, n_images), dim=1).indices)
    else:
        candidates = tuple(c.to(itc.device) for c in candidates)  # FAISS answers on the CPU
    cand_i2t = torch.zeros_like(itc, dtype=torch.bool)
    cand_i2t.scatter_(1, candidates[0], True)
    cand_t2i = torch.zeros_like(itc, dtype=torch.bool)
    cand_t2i.scatter_(0, candidates[1].t(), True)
    pairs = (cand_i2t | cand_t2i).nonzero()
    combined = itc.clone()
    combined[pairs[:, 0], pairs[:, 1]] += pair_scorer(pairs).to(itc)

    def lift(cand: torch.Tensor) -> torch.Tensor:
        # Shift the candidates above the best non-candidate so they always rank first.
        shift = (itc.max() - combined[cand].min()).clamp_min(0) + 1.0
        return torch.where(cand, combined + shift, itc)

    return lift(cand_i2t), lift(cand_t2i)


def split_by_image(score_own_pairs, n_images: int, batch_size: int):
    """A pair scorer over a gallery of ``n_images`` split across processes by
    :func:`~fibervl.engine.distributed.rank_share` in batches of ``batch_size``:
    ``score_own_pairs(pairs [P, 2]) -> [P]`` scores pairs of this rank's images, given as (row in
    its share, text index). Returns ``f(pairs [P, 2]) -> [P]`` for (gallery image, text) pairs:
    each rank scores the pairs of its own images, once, and every rank returns every pair's
    score (collective). ``score_own_pairs`` itself in one process."""
    if not D.is_distributed():
        return score_own_pairs
    own_images = torch.tensor(D.rank_share(range(n_images), batch_size), dtype=torch.long)
    row = torch.full((n_images,), -1, dtype=torch.long)  # image -> its row in this rank's share (-1: another's)
    row[own_images] = torch.arange(own_images.numel())

    def score(pairs: torch.Tensor) -> torch.Tensor:
        pairs = pairs.cpu()
        mine = (row[pairs[:, 0]] >= 0).nonzero().squeeze(1)
        own = pairs[mine].clone()
        own[:, 0] = row[own[:, 0]]
        out = torch.empty(pairs.shape[0])
        for index, scores in D.all_gather_object((mine, score_own_pairs(own).cpu())):
            out[index] = scores
        return out

    return score


def parse_mode(mode: str) -> tuple[str, int]:
    """A retrieval mode of the paper's Table 4 -> (kind, k): ``itc`` (the dual encoder), ``itm``
    (ITM alone over every pair), ``itc+itm`` (their sum over every pair), ``rerank@K`` (the ITC
    top K re-scored with ITC + ITM)."""
    if mode in ("itc", "itm", "itc+itm"):
        return mode, 0
    if mode.startswith("rerank@") and mode[7:].isdigit() and int(mode[7:]) > 0:
        return "rerank", int(mode[7:])
    raise ValueError(f"unknown retrieval mode {mode!r}: use itc, itm, itc+itm or rerank@K (e.g. rerank@20)")


def _recall_both_ways(s_i2t: torch.Tensor, s_t2i: torch.Tensor, t2i: torch.Tensor) -> dict[str, float]:
    """Recall of image->text read from ``s_i2t`` and text->image from ``s_t2i`` (both [I, T]), with rsum."""
    r = {k: v for k, v in retrieval_recall(s_i2t, t2i).items() if k.startswith("i2t")}
    r.update({k: v for k, v in retrieval_recall(s_t2i, t2i).items() if k.startswith("t2i")})
    r["rsum"] = sum(r.values())
    return r


def weighted(scorer, weight: float):
    """``scorer`` (pairs [P, 2] -> ITM log-odds [P]) with its scores times ``weight``."""
    return lambda pairs: weight * scorer(pairs)


def scored_once(scorer):
    """``scorer`` remembering its last answer: re-ranking the same candidates at several ITM
    weights runs the fused passes once."""
    last: list = []

    def score(pairs: torch.Tensor) -> torch.Tensor:
        if not (last and torch.equal(last[0], pairs)):
            last[:] = [pairs.clone(), scorer(pairs)]
        return last[1]

    return score


SWEEP_PREFIX = "itm_weight_sweep/"


def choose_itm_weight(metrics: dict[str, float]) -> float:
    """The ITM weight with the best mean R@1 of both directions among the ``itm_weight_sweep/W``
    entries of :func:`evaluate_retrieval`'s metrics (``sweep_itm_weights``); ties go to the
    smaller weight, the one that overrules ITC less."""
    sweep = {float(k[len(SWEEP_PREFIX):]): v for k, v in metrics.items() if k.startswith(SWEEP_PREFIX)}
    if not sweep:
        raise ValueError("no itm_weight_sweep/ entries: evaluate with sweep_itm_weights and rerank_k > 0")
    best = max(sweep.values())
    return min(w for w, v in sweep.items() if v == best)


@torch.no_grad()
def evaluate_retrieval(model, tokenizer: Tokenizer, reader, image_size: int, max_length: int, limit: int = 0,
                       rerank_k: int = 16, use_faiss: bool = False, itm_batch_size: int = 64,
                       bf16: bool = False, modes: tuple[str, ...] = (), prefix_dtype: torch.dtype | None = None,
                       prefix_dir: str | Path | None = None, itm_weight: float = 1.0,
                       sweep_itm_weights: tuple[float, ...] = ()) -> dict[str, float]:
    """Dual-encoder recall (``itc_*`` keys) and, with ``rerank_k`` > 0, the re-ranked recall
    (``rerank_*``: top ``rerank_k`` re-scored with ITC + ``itm_weight`` x ITM; the weight is
    ``rerank_itm_weight``) over a captions split. ``sweep_itm_weights`` adds, for each weight W,
    ``itm_weight_sweep/W``: the mean R@1 of both directions re-ranked with that weight (the same
    fused passes; :func:`choose_itm_weight` reads them).

    ``modes`` (see :func:`parse_mode`) adds the paper's Table 4 comparison: for each mode
    ``MODE/<recall>``, ``MODE/pairs`` (fused passes) and ``MODE/seconds`` (its scoring time; the
    gallery's prefixes, computed once for all modes, are ``prefixes/seconds``). The fused passes
    read the gallery's prefixes, computed a batch of images at a time and kept in
    ``prefix_dtype`` (default as computed), in memory or memory-mapped in ``prefix_dir``
    (:mod:`fibervl.tasks.gallery`). Under torchrun the images, texts and pairs are split across
    the processes and every process returns the same metrics (collective: call it on every rank)."""
    from .gallery import image_prefix_rows, text_prefix_rows, tokenize_gallery

    parsed = [(m, *parse_mode(m)) for m in modes]
    paths, texts, text_to_image = _limit(reader, limit)
    start = time.perf_counter()
    image_embed, text_embed = _embed_split(model, tokenizer, paths, texts, image_size, max_length, bf16)
    itc_seconds = time.perf_counter() - start
    was_training = model.training
    model.eval()
    try:
        itc = image_embed @ text_embed.t()  # cosine similarities
        t2i = torch.tensor(text_to_image)
        metrics: dict[str, float] = {f"itc_{k}": v for k, v in retrieval_recall(itc, t2i).items()}
        scorer, prefix_seconds = None, None
        if rerank_k > 0 or any(kind != "itc" for _, kind, _ in parsed):
            start = time.perf_counter()
            ids, mask = tokenize_gallery(tokenizer, texts, max_length)
            # Under torchrun each process keeps the prefixes of its share of the images and scores
            # the pairs of those images (split_by_image); each computes every text's prefix (the
            # text tower alone, cheap next to the image prefixes and the fused passes).
            own_paths = D.rank_share(paths, itm_batch_size)  # the image batches of one process
            rows_dir = Path(prefix_dir) / f"rank{D.get_rank()}" if prefix_dir and D.is_distributed() else prefix_dir
            image_rows = (image_prefix_rows(model, own_paths, image_size, itm_batch_size, bf16, prefix_dtype, rows_dir)
                          if own_paths else torch.zeros(0))
            text_rows = text_prefix_rows(model, ids, mask, 4 * itm_batch_size, bf16, prefix_dtype, rows_dir)
            prefix_seconds = time.perf_counter() - start

            def score_pairs(pairs: torch.Tensor) -> torch.Tensor:
                return itm_prefix_pair_scores(model, image_rows, text_rows, mask, pairs, itm_batch_size, bf16)

            scorer = split_by_image(score_pairs, len(paths), itm_batch_size)

        if rerank_k > 0:
            # Candidates from the embeddings (cosine order = ITC order); with FAISS for large
            # galleries. The recall itself still reads the dense [I, T] matrix.
            candidates = (topk_candidates(image_embed, text_embed, rerank_k, use_faiss)[1],
                          topk_candidates(text_embed, image_embed, rerank_k, use_faiss)[1])
            once = scored_once(scorer)  # every weight re-ranks the same candidates
            for w in sweep_itm_weights:
                rr = _recall_both_ways(*rerank_scores(itc, weighted(once, w), rerank_k, candidates), t2i)
                metrics[f"{SWEEP_PREFIX}{w:g}"] = (rr["i2t_r1"] + rr["t2i_r1"]) / 2
            rr = _recall_both_ways(*rerank_scores(itc, weighted(once, itm_weight), rerank_k, candidates), t2i)
            metrics.update({f"rerank_{k}": v for k, v in rr.items()})
            metrics["rerank_k"] = rerank_k
            metrics["rerank_itm_weight"] = itm_weight
        if parsed:
            metrics.update(_compare_modes(parsed, itc, t2i, scorer, itc_seconds, itm_weight))
            if prefix_seconds is not None:
                metrics["prefixes/seconds"] = prefix_seconds
    finally:
        model.train(was_training)
    metrics.update(images=len(paths), texts=len(texts))
    return metrics


def _compare_modes(parsed, itc: torch.Tensor, t2i: torch.Tensor, scorer, itc_seconds: float,
                   itm_weight: float = 1.0) -> dict[str, float]:
    """Recall, fused passes and scoring seconds of each mode (see :func:`evaluate_retrieval`).
    ``itc_seconds``: the encoder passes and the product, the dual encoder's whole cost; ITC + ITM
    sums (``itc+itm``, ``rerank@K``) weigh ITM by ``itm_weight``."""
    out: dict[str, float] = {}
    every_pair = None  # ITM of every pair: "itm" and "itc+itm" need the same passes, scored once

    def timed(fn):
        start = time.perf_counter()
        result = fn()
        return result, time.perf_counter() - start

    for name, kind, k in parsed:
        if kind == "itc":
            scores, pairs, seconds = (itc, itc), 0, itc_seconds
        elif kind == "rerank":
            scored = []
            scores, seconds = timed(lambda: rerank_scores(
                itc, lambda p: scored.append(len(p)) or itm_weight * scorer(p), k))
            pairs = sum(scored)
        else:
            if every_pair is None:
                grid = torch.cartesian_prod(torch.arange(itc.shape[0]), torch.arange(itc.shape[1]))
                every_pair = timed(lambda: scorer(grid).reshape(itc.shape))
            itm, seconds = every_pair
            both = itm if kind == "itm" else itc + itm_weight * itm
            scores, pairs = (both, both), itc.numel()
        out.update({f"{name}/{m}": v for m, v in _recall_both_ways(*scores, t2i).items()})
        out[f"{name}/pairs"] = pairs
        out[f"{name}/seconds"] = seconds
    return out


@torch.no_grad()
def evaluate_itc_retrieval(model, tokenizer: Tokenizer, reader, image_size: int, max_length: int,
                           limit: int = 0, bf16: bool = False) -> dict[str, float]:
    """R@1/5/10 both ways over a captions split (e.g. :class:`~fibervl.data.KarpathyCaptions`),
    with the chance level. ``limit``: only the first ``limit`` images (0 = all)."""
    paths, texts, text_to_image = _limit(reader, limit)
    image_embed, text_embed = _embed_split(model, tokenizer, paths, texts, image_size, max_length, bf16)
    scores = image_embed @ text_embed.t()
    metrics = retrieval_recall(scores, torch.tensor(text_to_image))
    chance = chance_recall(len(paths), len(texts), len(texts) / max(1, len(paths)))
    metrics.update({f"chance_{k}": v for k, v in chance.items()})
    metrics.update(images=len(paths), texts=len(texts))
    return metrics

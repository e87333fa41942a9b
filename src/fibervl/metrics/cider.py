"""CIDEr-D in plain Python: the reward of CIDEr optimisation, and a Java-free caption score.

CIDEr (Vedantam et al. 2015) compares TF-IDF weighted n-gram vectors (n = 1..4) of a candidate
with those of each reference: the cosine per n, averaged over n and over the references, times
10. CIDEr-D adds two things against gaming: a candidate n-gram's weight is clipped at the
reference's (``min(h, r) * r`` instead of ``h * r``), and every cosine is multiplied by the
length penalty ``exp(-(l_h - l_r)^2 / (2 sigma^2))``, sigma = 6. Like the reference
implementations (coco-caption's and the scorer of the official FIBER code), the "length" is the
number of 2-gram occurrences (one less than the words for two words or more).

Where the inverse document frequencies come from is the remaining choice:

* :func:`corpus_cider`: from the references of the set being scored, as the COCO caption
  evaluation does. pycocoevalcap's ``Cider`` is exactly this (with clipping and the length
  penalty, though it is named CIDEr), and this function agrees with it (tests).
* :class:`CiderD` with fixed ``documents``: from a reference corpus given once (the training
  references, for SCST), so a batch of a few images is scored with corpus-wide IDF.

``clip=False, sigma=None`` gives the original CIDEr of the paper (no clipping, no penalty).
Sentences are tokenised by :func:`tokenize` (lower case, punctuation dropped: close to the PTB
tokenizer the COCO evaluation runs in Java, not equal for contractions or hyphens); pass
``tokenizer=str.split`` for text already tokenised.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Callable, Iterable, Sequence

Vector = tuple[list[dict[tuple[str, ...], float]], list[float], int]  # (weights per n, norms per n, length)

# The punctuation pycocoevalcap's PTB tokenizer removes; words keep inner apostrophes and hyphens.
_TOKEN = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens without punctuation: ``"A red, round circle."`` -> ``["a", "red",
    "round", "circle"]``."""
    return _TOKEN.findall(text.lower())


def ngram_counts(words: Sequence[str], n: int = 4) -> Counter:
    """Counts of every 1..n-gram (tuples of words) of ``words``."""
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


class CiderD:
    """CIDEr-D scores with document frequencies from ``documents``: one group of reference
    sentences per image (an n-gram's document frequency is the number of groups that contain
    it; IDF = log(groups) - log(max(1, df))).

    ``n``: longest n-gram; ``sigma``: the length penalty's width (None: no penalty); ``clip``:
    clip candidate weights at the reference's. Scores are on pycocoevalcap's scale (the
    reported "CIDEr 120" is 1.2 here). Reference vectors are cached per reference group, so
    scoring the same training image again costs the candidate only.
    """

    def __init__(self, documents: Iterable[Sequence[str]], n: int = 4, sigma: float | None = 6.0, clip: bool = True,
                 tokenizer: Callable[[str], list[str]] = tokenize) -> None:
        self.n, self.sigma, self.clip, self.tokenizer = n, sigma, clip, tokenizer
        self.document_frequency: Counter = Counter()
        groups = 0
        for refs in documents:
            groups += 1
            self.document_frequency.update({g for r in refs for g in ngram_counts(self.tokenizer(r), n)})
        if groups == 0:
            raise ValueError("CiderD needs at least one group of reference sentences for its document frequencies")
        self.log_documents = math.log(float(groups))
        self._ref_cache: dict[tuple[str, ...], list[Vector]] = {}

    def vector(self, sentence: str) -> Vector:
        """TF-IDF weights per n-gram length, their L2 norms, and the length (2-gram count)."""
        weights: list[dict[tuple[str, ...], float]] = [{} for _ in range(self.n)]
        norms = [0.0] * self.n
        length = 0
        for gram, tf in ngram_counts(self.tokenizer(sentence), self.n).items():
            k = len(gram) - 1
            w = tf * (self.log_documents - math.log(max(1.0, self.document_frequency[gram])))
            weights[k][gram] = w
            norms[k] += w * w
            if k == 1:
                length += tf
        return weights, [math.sqrt(x) for x in norms], length

    def _similarity(self, hyp: Vector, ref: Vector) -> float:
        """Sum over n of the (clipped) cosine of hyp and ref, times the length penalty."""
        (hw, hn, hl), (rw, rn, rl) = hyp, ref
        penalty = 1.0 if self.sigma is None else math.exp(-((hl - rl) ** 2) / (2 * self.sigma ** 2))
        total = 0.0
        for k in range(self.n):
            dot = sum((min(w, rw[k].get(g, 0.0)) if self.clip else w) * rw[k].get(g, 0.0) for g, w in hw[k].items())
            if hn[k] and rn[k]:
                dot /= hn[k] * rn[k]
            total += dot * penalty
        return total

    def _references(self, refs: Sequence[str]) -> list[Vector]:
        key = tuple(refs)
        cached = self._ref_cache.get(key)
        if cached is None:
            cached = self._ref_cache[key] = [self.vector(r) for r in refs]
        return cached

    def score(self, candidate: str, references: Sequence[str]) -> float:
        """CIDEr-D of one candidate against its image's references."""
        if not references:
            raise ValueError("CIDEr-D needs at least one reference sentence")
        hyp = self.vector(candidate)
        refs = self._references(references)
        return 10.0 * sum(self._similarity(hyp, r) for r in refs) / (self.n * len(refs))

    def scores(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
        """One score per candidate; ``references[i]`` are candidate i's image's sentences."""
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} reference groups")
        return [self.score(c, r) for c, r in zip(candidates, references)]


def corpus_cider(candidates: dict, references: dict, n: int = 4, sigma: float | None = 6.0, clip: bool = True,
                 tokenizer: Callable[[str], list[str]] = tokenize) -> tuple[float, dict]:
    """Corpus CIDEr-D of ``candidates`` {image id: sentence} against ``references`` {image id:
    [sentences]}, the document frequencies taken from these references (the COCO evaluation's
    CIDEr; pycocoevalcap's ``Cider`` on the same tokens). Returns (mean, {image id: score})."""
    if set(candidates) != set(references):
        raise ValueError("candidates and references must have the same image ids")
    scorer = CiderD(references.values(), n=n, sigma=sigma, clip=clip, tokenizer=tokenizer)
    per_image = {k: scorer.score(c, references[k]) for k, c in candidates.items()}
    return sum(per_image.values()) / len(per_image), per_image

"""Mixtures of training sources.

:class:`Mixture` (map-style): the official way of mixing detection and grounding sets (each
set repeated ``*_COPY`` times in one concatenation): part ``k`` of ``n_k`` items appears
``weight_k * n_k`` times per epoch, whole copies first, the fraction as a fixed seeded subset.
It is an ordinary indexable sequence, so the engine's sampler shuffles it, splits it over
ranks and resumes it exactly. With every weight 1 it is the plain concatenation.

:class:`MixedStream` (iterable): sources of which at least one is a stream (webdataset
shards). Each draw picks a source with probability proportional to its weight and takes its
next sample; every source restarts when exhausted (an endless stream: train with
``train.max_steps``). Nothing is loaded into memory beyond one sample; the draws depend only on
(seed, epoch, rank, DataLoader worker), so a resumed run reads the same stream.
"""

from __future__ import annotations

import bisect
from typing import Iterator, Sequence

import torch
from torch.utils.data import IterableDataset, get_worker_info


def _fraction_subset(n: int, count: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:count].sort().values


class Mixture(Sequence):
    """``parts`` (indexable) repeated by ``weights``: ``len == sum(round(w * len(part)))``.

    Also carries what recipes ask of a reader: ``skip_bad`` (any part's), ``images`` (the
    parts' image lists, each part once: caption references) and ``parts``.
    """

    def __init__(self, parts: Sequence[Sequence], weights: Sequence[float] | None = None, seed: int = 0):
        weights = [1.0] * len(parts) if weights is None else [float(w) for w in weights]
        if len(weights) != len(parts):
            raise ValueError(f"{len(parts)} parts but {len(weights)} weights")
        self.parts, self.weights = list(parts), weights
        self._plans = []  # per part: (size, whole copies, subset of the fractional copy)
        ends, total = [], 0
        for k, (part, w) in enumerate(zip(self.parts, weights)):
            n = len(part)
            copies = int(w)
            extra = round((w - copies) * n)
            subset = _fraction_subset(n, extra, seed * 7919 + k) if extra else None
            self._plans.append((n, copies, subset))
            total += n * copies + extra
            ends.append(total)
        self._ends = ends

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def locate(self, i: int) -> tuple[int, int]:
        """(part, index in the part) of item ``i``."""
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a mixture of {len(self)} items")
        k = bisect.bisect_right(self._ends, i)
        j = i - (self._ends[k - 1] if k else 0)
        n, copies, subset = self._plans[k]
        return k, (j % n if j < n * copies else int(subset[j - n * copies]))

    def __getitem__(self, i):  # type: ignore[override]
        k, j = self.locate(i)
        return self.parts[k][j]

    def counts(self) -> list[int]:
        """Items per epoch of each part."""
        return [b - a for a, b in zip([0] + self._ends[:-1], self._ends)]

    @property
    def skip_bad(self) -> bool:
        return any(getattr(p, "skip_bad", False) for p in self.parts)

    @property
    def images(self) -> list[dict]:
        seen, out = set(), []
        for p in self.parts:
            if id(p) not in seen and hasattr(p, "images"):
                seen.add(id(p))
                out.extend(p.images)
        return out

    def __repr__(self) -> str:
        return f"Mixture({', '.join(f'{n} of {type(p).__name__}' for n, p in zip(self.counts(), self.parts))})"


def mix(parts: Sequence[Sequence], weights: Sequence[float], seed: int = 0):
    """One part of weight 1 as it is (the same object: recipes see their reader), else a
    :class:`Mixture`."""
    if len(parts) == 1 and float(weights[0]) == 1.0:
        return parts[0]
    return Mixture(parts, weights, seed)


class MixedStream(IterableDataset):
    """An endless weighted mixture of streams (objects with ``shards``, iterated) and indexable
    parts, processed by ``processor`` (``None`` from the processor: a skipped sample, which the
    collator drops).

    Work is split over ranks and DataLoader workers: a stream's shards go to global worker ``g``
    when ``shard_index % workers == g`` (so it needs at least as many shards as global
    workers), an indexable part's items by position in each pass's permutation. ``rank`` /
    ``world_size`` default to the process group's, read when the trainer calls
    :meth:`set_epoch` (the group does not exist yet when recipes build their data).
    """

    def __init__(self, parts: Sequence, weights: Sequence[float], processor, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None):
        if not parts:
            raise ValueError("a mixed stream needs at least one part")
        if not any(float(w) > 0 for w in weights):
            raise ValueError("a mixed stream needs a part with weight > 0")
        self.parts, self.weights, self.processor = list(parts), [float(w) for w in weights], processor
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        from ...engine import distributed as D

        self.epoch = epoch
        if self.rank is None or self.world_size is None:
            self.rank, self.world_size = D.get_rank(), D.get_world_size()

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        rank, world = self.rank or 0, self.world_size or 1
        return rank * workers + worker, world * workers

    def _endless(self, k: int, me: int, total: int) -> Iterator:
        part = self.parts[k]
        if hasattr(part, "shards"):
            from copy import copy

            if len(part.shards) < total:
                raise ValueError(f"{len(part.shards)} shards cannot feed {total} workers (world_size x num_workers)")
            mine = copy(part)
            mine.shards = part.shards[me::total]
            while True:
                empty = True
                for sample in mine:
                    empty = False
                    yield sample
                if empty:
                    raise ValueError(f"the shards {[str(s) for s in mine.shards]} hold no sample")
        n = len(part)
        if n == 0:
            raise ValueError(f"part {k} of the mixture is empty")
        cycle = 0
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 7919 + k * 104_729 + cycle)
            order = torch.randperm(n, generator=g)
            mine = order[me::total] if n >= total else order[me % n: me % n + 1]
            for i in mine.tolist():
                yield part[i]
            cycle += 1

    def __iter__(self):
        me, total = self._worker()
        streams = [self._endless(k, me, total) if w > 0 else None for k, w in enumerate(self.weights)]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 7919 + me + 1)
        probs = torch.tensor(self.weights, dtype=torch.float64)
        while True:
            k = int(torch.multinomial(probs, 1, generator=g))
            yield self.processor(next(streams[k]))

"""A distributed sampler whose order depends only on (seed, epoch) and that can start mid-epoch.

The permutation is :class:`torch.utils.data.DistributedSampler`'s (``randperm`` seeded with
``seed + epoch``, padded to a multiple of the world size, rank ``r`` taking every
``world``-th index from ``r``), so a single process with the same seed sees, batch by batch,
exactly the union of what the ranks see. ``set_epoch(epoch, start=k)`` makes the next iteration
skip this rank's first ``k`` indices without loading them: resuming after ``b`` batches of size
``B`` is ``start=b * B``.
"""

from __future__ import annotations

from typing import Iterator, Optional

from torch.utils.data import Dataset, DistributedSampler


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` plus a start offset. Works in a single process (world of 1)."""

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:  # type: ignore[override]
        """Select the epoch's permutation; skip the first ``start`` indices of this rank."""
        if start < 0 or start > self.num_samples:
            raise ValueError(f"start must be in [0, {self.num_samples}], got {start}")
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        it = super().__iter__()
        for i, idx in enumerate(it):
            if i >= self.start:
                yield idx

    def __len__(self) -> int:
        return self.num_samples - self.start

    def state(self) -> dict[str, Optional[int]]:
        return {"seed": self.seed, "epoch": self.epoch, "start": self.start}

"""torch Datasets over a reader and a processor, for DataLoader."""

from __future__ import annotations

from typing import Sequence

import torch.utils.data
from torch.utils.data import Dataset, IterableDataset

from .processor import ProcessedSample, Processor
from .samples import Sample


class ProcessedDataset(Dataset):
    """``ProcessedDataset(reader, processor)[i] == processor(reader[i])`` (None if skipped)."""

    def __init__(self, reader: Sequence[Sample], processor: Processor):
        self.reader, self.processor = reader, processor

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> ProcessedSample | None:
        return self.processor(self.reader[i])


class ProcessedIterableDataset(IterableDataset):
    """Streams ``processor(sample)`` over a :class:`~fibervl.data.readers.WebDatasetReader`.

    Shards are divided among DataLoader workers and, with ``rank`` / ``world_size``, among
    processes (shard ``k`` goes to global worker ``k % (world_size * num_workers)``), so every
    sample is seen once per epoch. Needs at least as many shards as global workers.
    """

    def __init__(self, reader, processor: Processor, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.reader, self.processor = reader, processor
        self.rank, self.world_size = rank, world_size

    def _my_shards(self) -> list:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        total = self.world_size * workers
        if len(self.reader.shards) < total:
            raise ValueError(f"{len(self.reader.shards)} shards cannot feed {total} workers (world_size x num_workers)")
        me = self.rank * workers + worker
        return self.reader.shards[me::total]

    def __iter__(self):
        from copy import copy

        reader = copy(self.reader)
        reader.shards = self._my_shards()
        for sample in reader:
            yield self.processor(sample)

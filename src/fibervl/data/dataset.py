"""A torch Dataset over a reader and a processor (map-style), for DataLoader."""

from __future__ import annotations

from typing import Sequence

from torch.utils.data import Dataset

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

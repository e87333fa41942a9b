"""Errors and skip accounting for bad input.

Every reader either raises :class:`DataError` (naming the file, the record and the problem)
or, when the caller asked for skipping, records the bad record in a :class:`SkipLog` and
moves on. Nothing bad is ever dropped silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


class DataError(ValueError):
    """Bad input data. ``str(err)`` reads ``FILE [record R]: PROBLEM``."""

    def __init__(self, file: str | Path | None, problem: str, record: object = None):
        self.file = str(file) if file is not None else None
        self.record = record
        self.problem = problem
        where = self.file or "<no file>"
        if record is not None:
            where += f" [record {record}]"
        super().__init__(f"{where}: {problem}")


@dataclass
class SkipLog:
    """Counts skipped records by problem; readers hold one as ``reader.skipped``.

    ``examples`` keeps the first few messages so a report can show what went wrong.
    """

    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 20

    def add(self, error: DataError) -> None:
        self.counts[_problem_kind(error.problem)] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(error))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return self.total > 0

    def summary(self) -> str:
        if not self.total:
            return "skipped 0 records"
        parts = ", ".join(f"{n} {kind}" for kind, n in self.counts.most_common())
        return f"skipped {self.total} records ({parts})"


def _problem_kind(problem: str) -> str:
    # The part before the first colon is the kind ("box outside the image: ..." -> grouped).
    return problem.split(":", 1)[0].strip()


def handle(error: DataError, skip: bool, log: SkipLog) -> None:
    """Raise ``error`` unless skipping was asked for, in which case count it."""
    if not skip:
        raise error
    log.add(error)

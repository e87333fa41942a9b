"""Errors and skip accounting for bad input.

Every reader either raises :class:`DataError` (naming the file, the record and the problem)
or, when the caller asked for skipping, records the bad record in a :class:`SkipLog` and
moves on. Nothing bad is ever dropped silently: each skipped record is logged as a warning on
the ``fibervl.data`` logger (the first :attr:`SkipLog.warn_first` of a file one by one, then
one line saying the rest are only counted), and a :func:`skip_report` (every ``fibervl``
command runs in one) ends with a summary per file and reason.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

log = logging.getLogger("fibervl.data")


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

    ``examples`` keeps the first few messages so a report can show what went wrong. Each
    record added is also passed to the current :class:`SkipReport`, which warns about it.
    """

    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 20
    # Records of one file warned about one by one; past this, a file's records are only counted.
    warn_first = 10

    def add(self, error: DataError) -> None:
        self.counts[problem_kind(error.problem)] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(error))
        _current().add(error)

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


def problem_kind(problem: str) -> str:
    """The reason of a problem, for counting: the part before the first colon, numbers as N
    ("box outside the image or empty: [..]" and "image_id 7 is not in images" group with their
    kind, not one line per box or id)."""
    return re.sub(r"\d+", "N", problem.split(":", 1)[0].strip())


class SkipReport:
    """The bad records skipped during one run, across readers: warns about each record the first
    time it is skipped (a file read again, as each evaluation does, is not counted twice) and
    sums them up per file and reason.

    ``watching``: a reader or processor that skips was created, so the summary has something to
    say even when nothing was bad. ``errors``: the first ``keep`` errors themselves (for a
    report that names every bad record, ``fibervl data check``).
    """

    def __init__(self, keep: int = 0, spool: str | Path | None = None) -> None:
        self.seen: set[tuple[str | None, str, str]] = set()
        self.by_file: dict[str, Counter] = {}
        self.watching = False
        self.keep = keep
        self.errors: list[DataError] = []
        # Data loader workers are forked copies of this process: what they skip is written to
        # ``spool`` (one JSON-lines file per worker) and counted here when the report is read.
        self.owner = os.getpid()
        self.spool = Path(spool) if spool is not None else None

    def watch(self) -> None:
        self.watching = True

    def add(self, error: DataError) -> None:
        if os.getpid() != self.owner:
            self._to_spool(error)
            return
        key = (error.file, str(error.record), error.problem)
        if key in self.seen:
            return
        self.seen.add(key)
        if len(self.errors) < self.keep:
            self.errors.append(error)
        file = error.file or "<no file>"
        counts = self.by_file.setdefault(file, Counter())
        counts[problem_kind(error.problem)] += 1
        n = sum(counts.values())
        if n <= SkipLog.warn_first:
            log.warning("skipped bad record: %s", error)
        elif n == SkipLog.warn_first + 1:
            log.warning("%s: more than %d bad records; the rest are counted, not listed (summary at the end)",
                        file, SkipLog.warn_first)

    def _to_spool(self, error: DataError) -> None:
        """In a worker process: log the record (the worker's own warning) and leave it for the owner."""
        log.warning("skipped bad record: %s", error)
        if self.spool is None:
            return
        with open(self.spool / f"{os.getpid()}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"file": error.file, "record": None if error.record is None else str(error.record),
                                "problem": error.problem}) + "\n")

    def collect(self) -> None:
        """Count the records the workers spooled (each once, as :meth:`add` does)."""
        if self.spool is None or os.getpid() != self.owner:
            return
        for path in sorted(self.spool.glob("*.jsonl")):
            lines = path.read_text(encoding="utf-8").splitlines()
            path.unlink()
            for line in lines:
                r = json.loads(line)
                self.add(DataError(r["file"], r["problem"], r["record"]))

    @property
    def total(self) -> int:
        self.collect()
        return sum(sum(c.values()) for c in self.by_file.values())

    def summary(self) -> str:
        """One line per file with its counts by reason; "" when skipping was never asked for."""
        if not self.total:
            return "skipping bad records: none found" if self.watching else ""
        lines = [f"{self.total} bad record{'s' if self.total != 1 else ''} skipped:"]
        for file, counts in self.by_file.items():
            lines.append(f"  {file}: " + ", ".join(f"{n} {kind}" for kind, n in counts.most_common()))
        return "\n".join(lines)


# The report records go to; the outermost one lasts as long as the process (library use).
_reports: list[SkipReport] = [SkipReport()]


def _current() -> SkipReport:
    return _reports[-1]


def skipping_on() -> None:
    """Tell the current report that a reader or processor skips bad records (so its summary
    says "none found" rather than nothing when all records were good)."""
    _current().watch()


@contextlib.contextmanager
def skip_report(keep: int = 0) -> Iterator[SkipReport]:
    """Collect the records skipped inside the block in a fresh :class:`SkipReport` (keeping the
    first ``keep`` errors) and log its summary at the end (a warning when records were skipped)."""
    spool = tempfile.mkdtemp(prefix="fibervl-skipped-")
    report = SkipReport(keep, spool)
    _reports.append(report)
    try:
        yield report
    finally:
        _reports.remove(report)
        summary = report.summary()
        shutil.rmtree(spool, ignore_errors=True)
        report.spool = None
        if summary:
            log.log(logging.WARNING if report.total else logging.INFO, "%s", summary)


def handle(error: DataError, skip: bool, skipped: SkipLog) -> None:
    """Raise ``error`` unless skipping was asked for, in which case count it."""
    if not skip:
        raise error
    skipped.add(error)

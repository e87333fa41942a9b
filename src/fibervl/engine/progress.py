"""Progress of long loops that are not training steps (evaluation passes, decoding, gallery
building, prefix caches): a bar on a terminal; when the output is redirected to a log, where a
bar's carriage returns would be noise, one plain line every ``FIBERVL_PROGRESS_EVERY`` seconds
(default 60), so that a long evaluation of a real data set (COCO's 5k test images re-ranked) is
not silent for an hour. ``FIBERVL_NO_BAR`` silences both; ``FIBERVL_FORCE_BAR`` shows the bar anyway."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def bars_shown() -> bool:
    if os.environ.get("FIBERVL_NO_BAR"):
        return False
    return sys.stderr.isatty() or bool(os.environ.get("FIBERVL_FORCE_BAR"))


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "batch") -> Iterator[T]:
    """``iterable``, with a bar on stderr when :func:`bars_shown`. ``total``: the number of items
    (taken from ``len(iterable)`` when it has one)."""
    if not bars_shown():
        if os.environ.get("FIBERVL_NO_BAR"):
            yield from iterable
        else:
            yield from _logged(iterable, desc, total, unit)
        return
    from tqdm import tqdm

    with tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=False, file=sys.stderr) as bar:
        yield from bar


def _logged(iterable: Iterable[T], desc: str, total: int | None, unit: str) -> Iterator[T]:
    """``iterable``, with a line ``DESC: N/TOTAL UNITs (P %), S s`` on stderr each time another
    ``FIBERVL_PROGRESS_EVERY`` seconds have passed (none for a loop shorter than that)."""
    every = float(os.environ.get("FIBERVL_PROGRESS_EVERY", "60"))
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    start = last = time.monotonic()
    for done, item in enumerate(iterable, 1):
        yield item
        now = time.monotonic()
        if now - last >= every:
            last = now
            units = unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")
            of = f"/{total} {units} ({100 * done / total:.0f} %)" if total else f" {units}"
            print(f"{desc}: {done}{of}, {now - start:.0f} s", file=sys.stderr, flush=True)

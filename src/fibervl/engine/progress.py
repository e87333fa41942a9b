"""Progress bars for long loops that are not training steps (evaluation passes, decoding,
gallery building, prefix caches): shown on a terminal, silent when the output is redirected
to a log or when ``FIBERVL_NO_BAR`` is set (``FIBERVL_FORCE_BAR`` shows them anyway)."""

from __future__ import annotations

import os
import sys
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
        yield from iterable
        return
    from tqdm import tqdm

    with tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=False, file=sys.stderr) as bar:
        yield from bar

"""Helpers for the scripts the tests start under torchrun."""

from __future__ import annotations

import logging
import os
import sys

from ..engine import distributed as D


def finish_worker(code: int = 0) -> None:
    """Tear the process group down on every rank together, then leave the process without the
    interpreter's teardown.

    Workers that had finished cleanly (process group destroyed, results written) have aborted at
    exit in CI now and then ("terminate called without an active exception", SIGABRT, on rank
    0, in different tests); the tests check what the workers compute, not torch's exit path."""
    D.destroy_distributed()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

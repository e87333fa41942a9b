"""Helpers for the scripts the tests start under torchrun."""

from __future__ import annotations

import logging
import os
import sys


def exit_now(code: int = 0) -> None:
    """Leave the process without the interpreter's teardown, once its process group is down.

    Workers that had finished cleanly (process group destroyed, results written) have aborted at
    exit in CI now and then ("terminate called without an active exception", SIGABRT, on rank
    0, in different tests); the tests check what the workers compute, not torch's exit path."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

"""Run-directory logging: readable ``train.log``, ``metrics.jsonl``, optional TensorBoard, tqdm bar.

Only rank 0 writes; on other ranks every method is a no-op (log records still go to stderr at
WARNING and above so that a failing rank is visible). ``metrics.jsonl`` holds one JSON object per
line, e.g. ``{"step": 10, "epoch": 0, "lr": 1e-4, "loss": 2.3, "samples_per_s": 512.0,
"data_time_s": 0.01, "compute_time_s": 0.2, "time": 1700000000.0}``. Eval results are logged the
same way with an ``"eval/"`` prefix. TensorBoard (``torch.utils.tensorboard``) is imported only
when enabled, so the package does not depend on it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

LOGGER_NAME = "fibervl.train"


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf
    return v


class RunLogger:
    """Writes the human log, the metrics file and (optionally) TensorBoard events for one run."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = False,
                 progress_bar: bool = True, total_steps: Optional[int] = None, initial_step: int = 0):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.log = logging.getLogger(LOGGER_NAME)
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        self._handlers: list[logging.Handler] = []
        self._metrics = None
        self._tb = None
        self._bar = None
        self._postfix: dict[str, str] = {}
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
        if enabled:
            writer_cls = None
            if tensorboard:  # checked first so that a failure leaves no open file behind
                try:
                    from torch.utils.tensorboard import SummaryWriter as writer_cls
                except ImportError as e:
                    raise RuntimeError(
                        "tensorboard=true needs the tensorboard package (pip install tensorboard)"
                    ) from e
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(self.run_dir / "train.log", encoding="utf-8")
            fh.setFormatter(fmt)
            self._handlers.append(fh)
            self._metrics = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
            if writer_cls is not None:
                self._tb = writer_cls(str(self.run_dir / "tensorboard"))
            if progress_bar and total_steps is not None:
                from tqdm import tqdm

                # shown on a terminal (or when FIBERVL_FORCE_BAR is set); redirected logs get train.log lines
                show = sys.stderr.isatty() or os.environ.get("FIBERVL_FORCE_BAR") is not None
                self._bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True,
                                 file=sys.stderr, disable=not show)
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        sh.setLevel(logging.INFO if enabled else logging.WARNING)
        self._handlers.append(sh)
        for h in self._handlers:
            self.log.addHandler(h)

    def info(self, msg: str, *args: Any) -> None:
        if self._bar is not None:
            # keep the bar intact: write through tqdm for the console copy
            for h in self._handlers:
                if isinstance(h, logging.FileHandler):
                    h.handle(self.log.makeRecord(self.log.name, logging.INFO, "", 0, msg, args, None))
            self._bar.write(msg % args if args else msg)
        else:
            self.log.info(msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        self.log.warning(msg, *args)

    def metrics(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        rec = {"step": step, **{k: _jsonable(v) for k, v in values.items()}, "time": round(time.time(), 3)}
        assert self._metrics is not None
        self._metrics.write(json.dumps(rec) + "\n")
        self._metrics.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)

    def progress(self, n_steps: int, postfix: Optional[dict[str, str]] = None) -> None:
        """Advance the bar (its rate and ETA come from tqdm) and update the shown values."""
        if self._bar is not None:
            if postfix:
                self._postfix.update(postfix)
                self._bar.set_postfix(self._postfix, refresh=False)
            self._bar.update(n_steps)

    def set_step(self, step: int) -> None:
        """Move the bar to ``step`` (after a resume)."""
        if self._bar is not None:
            self._bar.n = step
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._tb is not None:
            self._tb.close()
        for h in self._handlers:
            self.log.removeHandler(h)
            h.close()
        self._handlers = []

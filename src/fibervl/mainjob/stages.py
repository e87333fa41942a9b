"""Run named stages once: a finished stage is recorded and skipped when the job runs again.

    runner = StageRunner(out_dir)
    result = runner.run("coarse", lambda stage_dir: {...})   # JSON-serialisable result

Each stage works in ``OUT/stages/<name>/`` and, when it returns, its record
``OUT/stages/<name>/stage.json`` = ``{"status": "done", "seconds": ..., "result": ...}`` is written
atomically. A stage that raises gets ``"status": "failed"`` and the message; the job stops with
:class:`StageFailed`, which says which stage failed and that the earlier ones are kept.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

RECORD_NAME = "stage.json"


class StageFailed(RuntimeError):
    """A stage raised; the message names the stage, the error and where its log is."""


class StageInterrupted(RuntimeError):
    """A stage's training was stopped by a signal after saving a checkpoint: not finished, not
    failed; the next run resumes it."""


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


class StageRunner:
    """``redo``: stage names to run again even if finished (``{"all"}``: every stage). ``plan``:
    the names of the stages the job will run, in order; a stage of the plan says where it stands
    ("stage 6 of 11") and how long the job has been running when it starts."""

    def __init__(self, out_dir: str | Path, redo: set[str] | None = None, echo: Callable[[str], None] = print,
                 plan: list[str] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.redo = set(redo or ())
        self.echo = echo
        self.records: dict[str, dict] = {}
        self.plan = list(plan or ())
        self.started = time.perf_counter()

    def stage_dir(self, name: str) -> Path:
        return self.out_dir / "stages" / name

    def finished(self, name: str) -> dict | None:
        path = self.stage_dir(name) / RECORD_NAME
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None  # a torn record is no record: run the stage again
        return record if record.get("status") == "done" else None

    def run(self, name: str, fn: Callable[[Path], Any]) -> Any:
        redo = bool({"all", name} & self.redo)
        record = None if redo else self.finished(name)
        if redo and self.stage_dir(name).exists():
            # A fresh start: the engine would otherwise resume from the old run's last checkpoint.
            shutil.rmtree(self.stage_dir(name))
        if record is not None:
            self.echo(f"[{name}] finished earlier ({record['seconds']:.0f} s): skipped (--redo {name} runs it again)")
            self.records[name] = record
            return record["result"]
        stage_dir = self.stage_dir(name)
        stage_dir.mkdir(parents=True, exist_ok=True)
        self.echo(f"[{name}] running in {stage_dir}{self._progress(name)}")
        start = time.perf_counter()
        try:
            result = fn(stage_dir)
        except StageInterrupted as err:
            raise StageInterrupted(f"stage '{name}' {err}; its checkpoint is kept: re-run the same command to "
                                   "resume it") from None
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - every failure becomes a clear stop
            seconds = time.perf_counter() - start
            write_json_atomic(stage_dir / RECORD_NAME, {
                "status": "failed", "seconds": seconds, "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc()})
            raise StageFailed(
                f"stage '{name}' failed after {seconds:.0f} s: {type(err).__name__}: {err}\n"
                f"  traceback: {stage_dir / RECORD_NAME}\n"
                f"  the stages finished before it are kept (their models load with FiberModel.from_pretrained); "
                f"re-run the same command to continue from '{name}'") from err
        seconds = time.perf_counter() - start
        record = {"status": "done", "seconds": seconds, "result": result}
        write_json_atomic(stage_dir / RECORD_NAME, record)
        self.records[name] = record
        self.echo(f"[{name}] done in {seconds:.1f} s")
        return result

    def _progress(self, name: str) -> str:
        if name not in self.plan:
            return ""
        minutes, seconds = divmod(round(time.perf_counter() - self.started), 60)
        return f" (stage {self.plan.index(name) + 1} of {len(self.plan)}, {minutes} min {seconds} s into the job)"

    def seconds(self) -> dict[str, float]:
        return {name: round(r["seconds"], 1) for name, r in self.records.items()}

"""``fibervl run``: the whole pipeline on the embedded data set (see :mod:`.job`).

    fibervl run                               # the default preset, into runs/default
    fibervl run --preset quick --out /tmp/q   # the 3-minute end-to-end test
    fibervl run --redo vqa                    # run VQA (and the stages after it) again
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .job import PRETRAIN_STAGES, TASK_STAGES
from .presets import PRESETS, get_job_preset
from .report import MARGIN, beats_baseline
from .stages import StageFailed, StageInterrupted

STAGE_ORDER = ("data", *PRETRAIN_STAGES, *TASK_STAGES)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fibervl run",
        description="Generate the embedded shapes data set if missing, pre-train (coarse, then fine-grained), "
                    "fine-tune and evaluate all seven tasks, and write a report with every task's baseline. "
                    "Finished stages are skipped when the command runs again.")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS),
                   help="quick: about 3 minutes (CI); default: about 20 minutes on 2 CPU cores; gpu-small: one GPU")
    p.add_argument("--out", default=None, help="output directory (default runs/<preset>)")
    p.add_argument("--data", default=None,
                   help="an existing shapes data set directory (default: OUT/data, generated when missing)")
    p.add_argument("--redo", default="", help=f"comma-separated stages to run again, with every stage after them "
                                              f"('all' for everything); stages: {', '.join(STAGE_ORDER)}")
    p.add_argument("--tasks", default="", help=f"comma-separated subset of the tasks ({', '.join(TASK_STAGES)})")
    p.add_argument("--model", default="fiber", choices=("fiber", "albef", "vlmo", "all"),
                   help="model family: fiber (all seven tasks), albef or vlmo (retrieval, VQA, NLVR2), or all: "
                        "the three on the same data, with a comparison table (OUT/comparison.md)")
    p.add_argument("--image-steps", type=int, default=None, metavar="N",
                   help="run a supervised image-only stage of N steps (colours, shapes and sizes of each training image) "
                        "before the coarse stages, which start from its image tower (default: the preset's; 0 = none; "
                        "in an OUT whose stages ran without it, add --redo image)")
    p.add_argument("--check", action="store_true",
                   help="exit with status 3 unless every task beats its baseline, naming those that do not "
                        "(CI runs the quick preset with it and checks both against the table)")
    return p


def redo_set(names: str) -> set[str]:
    """``--redo coarse`` -> coarse and every stage after it (they were built on it)."""
    wanted = {n.strip() for n in names.split(",") if n.strip()}
    unknown = wanted - set(STAGE_ORDER) - {"all"}
    if unknown:
        raise ValueError(f"--redo: unknown stage(s) {sorted(unknown)}; stages: {', '.join(STAGE_ORDER)}")
    if "all" in wanted:
        return {"all"}
    first = min((STAGE_ORDER.index(n) for n in wanted), default=len(STAGE_ORDER))
    pretrain_or_data = first < STAGE_ORDER.index(next(iter(TASK_STAGES)))
    # A pre-training stage changes every later model; a task stage changes only itself.
    return set(STAGE_ORDER[first:]) if pretrain_or_data else wanted


def run_comparison(preset, out: Path, data: Path | None, redo: set[str], tasks, echo) -> dict:
    """The three families on one data set (``OUT/data`` unless given), each in ``OUT/<family>``,
    then ``OUT/comparison.md``. Returns ``{family: results}``."""
    from .compare import COMPARED_TASKS, write_comparison
    from .job import run_job, stage_data, JobContext
    from .stages import StageRunner

    if data is None:
        data = out / "data"
        runner = StageRunner(out, redo, echo)
        ctx = JobContext(preset, out, data, runner, echo)
        runner.run("data", lambda d: stage_data(ctx, d))
    per_family = {}
    for family in ("fiber", "albef", "vlmo"):
        echo(f"== {family}")
        per_family[family] = run_job(preset, out / family, data, redo, tasks or COMPARED_TASKS, echo, family)
    write_comparison(out, per_family, echo)
    return per_family


def main(argv: list[str]) -> int:
    import torch

    from ..engine.distributed import resolve_device
    from .job import run_job

    args = build_parser().parse_args(argv)
    preset = get_job_preset(args.preset)
    if args.image_steps is not None:
        if args.image_steps < 0:
            print(f"fibervl run: error: --image-steps must be >= 0, got {args.image_steps}", file=sys.stderr)
            return 2
        preset = dataclasses.replace(preset, image=dataclasses.replace(preset.image, steps=args.image_steps))
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip()) or None
    unknown = set(tasks or ()) - set(TASK_STAGES)
    if unknown:
        print(f"fibervl run: error: unknown task(s) {sorted(unknown)}; tasks: {', '.join(TASK_STAGES)}", file=sys.stderr)
        return 2
    try:
        # The engine's own check, before the data stage: gpu-small's 30,000 images take minutes.
        resolve_device(preset.device)
    except RuntimeError as err:
        print(f"fibervl run: error: preset {preset.name!r} needs a CUDA GPU ({err}; torch {torch.__version__}); "
              f"on a CPU use --preset default or quick", file=sys.stderr)
        return 2
    suffix = "" if args.model == "fiber" else f"-{args.model}"
    out = Path(args.out or f"runs/{preset.name}{suffix}")
    try:
        redo = redo_set(args.redo)
    except ValueError as err:
        print(f"fibervl run: error: {err}", file=sys.stderr)
        return 2
    print(f"fibervl run: preset {preset.name} ({preset.description}) -> {out}", flush=True)
    echo = lambda s: print(s, flush=True)  # noqa: E731
    try:
        if args.model == "all":
            summary = run_comparison(preset, out, Path(args.data) if args.data else None, redo, tasks, echo)
        else:
            summary = run_job(preset, out, Path(args.data) if args.data else None, redo, tasks, echo, args.model)
    except StageFailed as err:
        print(f"fibervl run: {err}", file=sys.stderr)
        return 1
    except StageInterrupted as err:
        print(f"fibervl run: {err}", file=sys.stderr)
        return 130
    per_family = summary if args.model == "all" else {args.model: summary}
    losing = [f"{fam}/{name}" for fam, res in per_family.items() for name, r in res["tasks"].items()
              if not beats_baseline(r)]
    if args.check and losing:
        print(f"fibervl run: tasks not at least {MARGIN:g} point above their baseline: {', '.join(losing)}",
              file=sys.stderr)
        return 3
    return 0

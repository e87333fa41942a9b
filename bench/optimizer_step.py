"""What one AdamW update costs on a small model: the per-tensor loop against the fused kernel.

    python bench/optimizer_step.py [--presets fiber-tiny fiber-tiny-fine] [--runs 15] [--rounds 3] [--write BENCHMARKS.md]

For each preset: every parameter of the model gets a fixed random gradient, and the median time
of ``optimizer.step()`` over ``--runs`` calls is taken for AdamW in its three implementations
(``foreach=False``: one set of kernels per tensor; ``foreach=True``: grouped kernels; ``fused=True``:
one kernel per group, what ``fibervl.engine.optim.build_optimizer`` uses), alternated ``--rounds``
times so that a busy moment of a shared host does not fall on one of them alone. Two parameter
groups, as a task's backbone and head have.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

# appended, not prepended: a PYTHONPATH naming another checkout's src wins, for timing that version
sys.path.append(str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from forward import median_time, publish_table  # noqa: E402
from fibervl.config import get_preset  # noqa: E402
from fibervl.modeling.fiber import FiberModel  # noqa: E402

VARIANTS = {"per-tensor loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def step_seconds(params: list[torch.nn.Parameter], runs: int, **kind) -> float:
    half = len(params) // 2
    optimizer = torch.optim.AdamW([{"params": params[:half], "lr": 1e-4},
                                   {"params": params[half:], "lr": 1e-3, "weight_decay": 0.0}],
                                  weight_decay=0.01, **kind)
    for _ in range(3):  # the moment buffers exist after the first step
        optimizer.step()
    return median_time(optimizer.step, runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["fiber-tiny", "fiber-tiny-fine"])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", type=Path, default=None, help="replace this section of a BENCHMARKS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = ["| preset | tensors | parameters | " + " | ".join(f"{v} (ms)" for v in VARIANTS) + " |",
            "| --- | ---: | ---: | " + " | ".join("---:" for _ in VARIANTS) + " |"]
    for preset in args.presets:
        params = [p for p in FiberModel(get_preset(preset)).parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for name, kind in VARIANTS.items():
                times[name].append(step_seconds(params, args.runs, **kind))
        best = {name: min(t) for name, t in times.items()}
        rows.append(f"| {preset} | {len(params)} | {sum(p.numel() for p in params) / 1e6:.2f} M | "
                    + " | ".join(f"{1000 * best[v]:.2f}" for v in VARIANTS) + " |")
        print(rows[-1], flush=True)
    publish_table("\n".join(rows), args.write, "optimizer_step",
                  f"{args.threads} threads; the least of {args.rounds} alternated medians of {args.runs} steps each")


if __name__ == "__main__":
    main()

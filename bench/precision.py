"""What ``precision: auto`` chooses on this machine, and why.

    python bench/precision.py [--threads 2] [--runs 3] [--write BENCHMARKS.md]

Prints the CPU model, the matmul throughput in fp32 and bf16 (1024^3, median of ``--runs`` after
a warm-up; bf16 is timed once where it is emulated, since one call then takes seconds), the
speed-up measured by :func:`fibervl.engine.precision.cpu_bf16_speedup`, the precision "auto"
resolves to, and the median time of a ``fiber-tiny`` ITC training step (batch 32) in both.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from forward import median_time, write_section  # noqa: E402
from fibervl.config import get_preset  # noqa: E402
from fibervl.engine.allocator import keep_freed_memory  # noqa: E402
from fibervl.engine.precision import cpu_bf16_speedup, resolve_precision  # noqa: E402
from fibervl.modeling.fiber import FiberModel  # noqa: E402
from fibervl.tasks.objectives import itc_logits  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def median_seconds(fn, runs: int, slow_after: float = 2.0) -> float:
    """:func:`forward.median_time`, unless one call takes over ``slow_after`` seconds (emulated
    bf16): then that call's time, since more calls would only cost minutes."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    return first if first > slow_after else median_time(fn, runs)


def matmul_gflops(dtype: torch.dtype, runs: int, n: int = 1024) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n ** 3 / median_seconds(lambda: a @ b, runs) / 1e9


def itc_step_seconds(precision: str, runs: int) -> float:
    cfg = get_preset("fiber-tiny")
    model = FiberModel(cfg).train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, cfg.text.vocab_size - 1, (32, 16), generator=g)
    images = torch.randn(32, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g)
    mask = torch.ones_like(ids)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = itc_logits(model.encode_image(images), model.encode_text(ids, mask), model.temperature).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return median_seconds(step, runs, slow_after=20.0)


def main() -> None:
    keep_freed_memory()  # large tensors re-use memory instead of faulting in fresh pages
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--write", type=Path, help="update this markdown file's bench:precision section")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fp32, bf16 = matmul_gflops(torch.float32, args.runs), matmul_gflops(torch.bfloat16, args.runs)
    speedup = cpu_bf16_speedup()
    auto = resolve_precision("auto", "cpu")
    step32, step16 = itc_step_seconds("fp32", args.runs), itc_step_seconds("bf16", args.runs)
    lines = [
        f"Command: `python bench/precision.py --threads {args.threads} --runs {args.runs} --write BENCHMARKS.md`", "",
        f"Machine: {cpu_name()}, torch {torch.__version__}, {args.threads} threads.", "",
        "| | fp32 | bf16 |", "| --- | ---: | ---: |",
        f"| matmul 1024^3 (GFLOP/s) | {fp32:.1f} | {bf16:.2f} |",
        f"| fiber-tiny ITC training step, batch 32 (s) | {step32:.2f} | {step16:.2f} |", "",
        f"`cpu_bf16_speedup()` (256x512x512 matmul, fp32 time / bf16 time): {speedup:.3g}; "
        f"`precision: auto` resolves to **{auto}** here.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(args.write, "precision", "### precision: auto (which precision a CPU trains in)\n\n" + text)


if __name__ == "__main__":
    main()

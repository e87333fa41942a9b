"""Fused-forward speed of FIBER presets against this machine's measured matmul peak.

    python bench/forward.py [--threads 2] [--runs 5] [--presets fiber-base fiber-tiny] [--compile] [--write BENCHMARKS.md]

For each preset: one fused forward (``FiberModel.fuse``) at the preset's image size, batch 2, 40
text tokens, in fp32, under bf16 autocast with fp32 weights, and with bf16 weights (no
autocast); and for fp32 and bf16 weights, every linear layer of that forward replayed alone
(``linear_replay``: what the matmul work costs without the rest). With ``--compile``, also
``optimize_for_inference``'s fuse in fp32 and with bf16 weights, compiled with frozen weights
(the row names the seconds the compile took). FLOPs are counted by
``fibervl.modeling.flops.count_flops`` (matmuls, convolutions, attention). GFLOP/s is compared
with a 2048x2048 matmul of the same precision timed in alternation with the forward: on a shared
machine other tenants only ever add time, and a burst of load slows both alike, so the table
compares the fastest forward with the fastest matmul of the whole run (after one warm-up of
each) and also gives the median forward. The bf16 outputs are compared with fp32 (relative norm
of ``cls_feats``). On a CPU whose bf16 matmuls are emulated (no AVX512-BF16 / AMX) the bf16 rows
are left out unless ``--bf16 always``: they would take minutes and compare with a meaningless
peak.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# appended, not prepended: a PYTHONPATH naming another checkout's src wins, for timing that version
sys.path.append(str(Path(__file__).resolve().parents[1] / "src"))

from fibervl.config import get_preset  # noqa: E402
from fibervl.engine.allocator import keep_freed_memory  # noqa: E402
from fibervl.engine.precision import bf16_is_fast, cpu_bf16_speedup  # noqa: E402
from fibervl.modeling.fiber import FiberModel  # noqa: E402
from fibervl.modeling.flops import count_flops  # noqa: E402
from fibervl.modeling.inference import optimize_for_inference  # noqa: E402
from fibervl.testing.models import set_fusion_gates  # noqa: E402


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_time(fn, runs: int) -> float:
    fn()
    return statistics.median(seconds(fn) for _ in range(runs))


class MatmulPeak:
    """The fastest 2048^3 matmul seen so far in each precision (``sample`` times one more)."""

    FLOP = 2 * 2048**3

    def __init__(self):
        self.best: dict[str, float] = {}
        self._operands: dict[str, tuple] = {}

    def sample(self, name: str) -> None:
        if name not in self._operands:
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
            a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
            self._operands[name] = (a, b)
            torch.mm(a, b)  # warm-up: picks (and builds) the kernel
        a, b = self._operands[name]
        self.best[name] = min(self.best.get(name, float("inf")), seconds(lambda: torch.mm(a, b)))

    def gflops(self, name: str) -> float:
        return self.FLOP / self.best[name] / 1e9


def time_round_robin(variants: list[dict], peak: MatmulPeak, runs: int) -> None:
    """Adds to each variant (``fn``, ``peak``: its precision) the fastest and the median of
    ``runs`` timings. The variants take turns, each run after one timing of its precision's
    matmul (the interleaving the module docstring explains), so a slow minute of the shared host
    slows every variant alike instead of the one that happened to run then. One warm-up each."""
    for v in variants:
        v["fn"]()
    times: list[list[float]] = [[] for _ in variants]
    for _ in range(runs):
        for v, t in zip(variants, times):
            peak.sample(v["peak"])
            t.append(seconds(v["fn"]))
    for v, t in zip(variants, times):
        v.update(seconds=min(t), median=statistics.median(t))


def inputs(cfg, batch: int, tokens: int):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g)
    ids = torch.randint(4, min(cfg.text.vocab_size, 50000), (batch, tokens), generator=g)
    ids[:, 0] = cfg.text.bos_token_id
    ids[:, -1] = cfg.text.eos_token_id
    return images, ids, torch.ones_like(ids)


def pair_batch(cfg, batch_size: int, tokens: int) -> dict:
    """A fixed random image-text batch of a pre-training step (``images``, ``input_ids``,
    ``attention_mask``, ``image_ids``), every image distinct; seeded, on the CPU."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, cfg.text.vocab_size - 1, (batch_size, tokens), generator=g)
    ids[:, 0], ids[:, -1] = cfg.text.bos_token_id, cfg.text.eos_token_id
    size = cfg.vision.image_size
    return {"images": torch.randn(batch_size, 3, size, size, generator=g), "input_ids": ids,
            "attention_mask": torch.ones_like(ids), "image_ids": torch.arange(batch_size)}


def linear_replay(fn, *args):
    """``(replay, gflop)``: ``replay()`` runs every ``F.linear`` call of ``fn(*args)`` again, one
    after the other, with the same weights on random inputs of the same shapes: the forward's
    matmul work alone, to time against the whole forward (what the rest of it costs)."""
    calls, original = [], F.linear

    def record(x, weight, bias=None):
        calls.append((x.numel() // x.shape[-1], x.shape[-1], weight, bias))
        return original(x, weight, bias)

    F.linear = record  # nn.Linear looks F.linear up at call time
    try:
        fn(*args)
    finally:
        F.linear = original
    inputs_by_shape = {}
    operands = [(inputs_by_shape.setdefault((m, k), torch.randn(m, k, dtype=w.dtype)), w, b) for m, k, w, b in calls]

    def replay():
        for x, weight, bias in operands:
            original(x, weight, bias)
    return replay, sum(2 * x.shape[0] * x.shape[1] * w.shape[0] for x, w, _ in operands) / 1e9


def inference_fuse(model: FiberModel, dtype: torch.dtype, compile: bool, args: tuple):
    """``(fuse, seconds)``: a call of the fuse of ``optimize_for_inference(copy of model, dtype,
    compile=compile)`` on ``args``, and the seconds its first call took (with ``compile``: the
    compile)."""
    fast = optimize_for_inference(copy.deepcopy(model), dtype=dtype, compile=compile, methods=("fuse",))
    return (lambda: fast.fuse(*args)), seconds(lambda: fast.fuse(*args))


def bench_preset(name: str, runs: int, batch: int, tokens: int, peak: MatmulPeak, with_bf16: bool,
                 compile: bool) -> list[dict]:
    cfg = get_preset(name)
    model = set_fusion_gates(FiberModel(cfg).eval(), 0.5)  # fusion active, as after training
    images, ids, mask = inputs(cfg, batch, tokens)
    gflop = count_flops(model.fuse, images, ids, mask) / 1e9
    args = (images, ids, mask)

    with torch.no_grad():
        ref = model.fuse(*args).cls_feats

        def autocast():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model.fuse(*args)

        rows = [dict(mode="fp32", fn=lambda: model.fuse(*args), peak="fp32", forward=True)]
        replay, linear_gflop = linear_replay(rows[0]["fn"])
        rows.append(dict(mode="fp32, its linear layers alone", fn=replay, peak="fp32", gflop=linear_gflop))
        if compile:
            fn, took = inference_fuse(model, torch.float32, True, args)
            rows.append(dict(mode=f"fp32, compiled with frozen weights ({took:.0f} s to compile)", fn=fn,
                             peak="fp32", forward=True))
        if with_bf16:
            rows.append(dict(mode="bf16 autocast (fp32 weights)", fn=autocast, peak="bf16", forward=True))
            if compile:
                fn, took = inference_fuse(model, torch.bfloat16, True, args)
                rows.append(dict(mode=f"bf16 weights, compiled with frozen weights ({took:.0f} s to compile)",
                                 fn=fn, peak="bf16", forward=True))
            fn, _ = inference_fuse(model, torch.bfloat16, False, (images.bfloat16(), ids, mask))
            rows.append(dict(mode="bf16 weights", fn=fn, peak="bf16", forward=True))
            replay, linear_gflop = linear_replay(rows[-1]["fn"])
            rows.append(dict(mode="bf16 weights, its linear layers alone", fn=replay, peak="bf16",
                             gflop=linear_gflop))
        time_round_robin(rows, peak, runs)
        for row in rows:
            if row.pop("forward", False):
                row["out"] = row["fn"]().cls_feats
            del row["fn"]
    return _finish(rows, name, gflop, ref)


def _finish(rows: list[dict], name: str, gflop: float, ref: torch.Tensor) -> list[dict]:
    """Each row with its GFLOP (the forward's, unless the row carries its own), GFLOP/s and, for a
    forward, the relative difference of its ``cls_feats`` from fp32's."""
    for row in rows:
        row.setdefault("gflop", gflop)
        out = row.pop("out", None)
        row.update(preset=name, gflops=row["gflop"] / row["seconds"],
                   rel_err=None if out is None else ((out.float() - ref).norm() / ref.norm()).item())
    return rows


def main() -> None:
    keep_freed_memory()  # large tensors re-use memory instead of faulting in fresh pages
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--presets", nargs="+", default=["fiber-base", "fiber-tiny"])
    parser.add_argument("--bf16", choices=("auto", "always"), default="auto",
                        help="auto: measure bf16 only where bf16 matmuls are fast on this CPU")
    parser.add_argument("--compile", action="store_true",
                        help="also time optimize_for_inference's compiled fuse (fp32 and bf16 weights; "
                             "each compile takes 1-2 min for fiber-base)")
    parser.add_argument("--write", type=Path, help="replace this section of the given markdown file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Where the CPU has no bf16 matmul instructions PyTorch emulates them, hundreds of times
    # slower than fp32: a "percentage of the bf16 peak" means nothing there, and measuring it
    # takes minutes. The bf16 rows are then left out and the table says why.
    with_bf16 = args.bf16 == "always" or bf16_is_fast("cpu")
    peak = MatmulPeak()
    rows = [r for name in args.presets for r in bench_preset(name, args.runs, args.batch, args.tokens, peak, with_bf16, args.compile)]
    if with_bf16:
        peak_text = f"fp32 {peak.gflops('fp32'):.0f} GFLOP/s, bf16 {peak.gflops('bf16'):.0f} GFLOP/s."
    else:
        peak_text = (f"fp32 {peak.gflops('fp32'):.0f} GFLOP/s; bf16 is emulated on this CPU (a matmul "
                     f"{1 / cpu_bf16_speedup():.0f}x slower than fp32), so the bf16 rows are not measured.")
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads. "
        f"Matmul peak (2048^3, the fastest of the run): {peak_text}",
        f"Fused forward (`FiberModel.fuse`), batch {args.batch}, {args.tokens} tokens: the fastest and the median "
        f"of {args.runs} after a warm-up; a preset's variants take turns, each run after one timing of the peak matmul.",
        "",
        "| preset | mode | GFLOP | seconds (fastest) | seconds (median) | GFLOP/s | % of peak | cls rel. diff vs fp32 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        pct = 100 * r["gflops"] / peak.gflops(r["peak"])
        rel = "" if r["rel_err"] is None else f"{r['rel_err']:.1e}"
        lines.append(f"| {r['preset']} | {r['mode']} | {r['gflop']:.1f} | {r['seconds']:.3f} | {r['median']:.3f} | "
                     f"{r['gflops']:.0f} | {pct:.0f} % of {r['peak']} | {rel} |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(args.write, "forward", f"Command: `python bench/forward.py {' '.join(sys.argv[1:])}`\n\n" + text)


def publish_table(table: str, write: Path | None, name: str, how: str) -> None:
    """Print ``table``; with ``write``, put it in that file's section ``name`` under the command
    line that produced it (this process's own) and ``how`` (threads, repetitions)."""
    print(table)
    if write:
        command = " ".join([f"python bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])
        write_section(write, name, f"Command: `{command}` ({torch.__version__}, {how}).\n\n{table}")


def write_section(path: Path, name: str, body: str) -> None:
    """Replace the block between ``<!-- bench:NAME -->`` markers (appending it if absent)."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body}\n{end}"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)


if __name__ == "__main__":
    main()

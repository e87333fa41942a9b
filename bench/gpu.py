"""FIBER on one GPU: fused-forward speed against the card's measured matmul peak, and the
training throughput of coarse pre-training.

    python bench/gpu.py [--presets fiber-base fiber-tiny] [--write BENCHMARKS.md]

Forward: ``FiberModel.fuse`` at each preset's image size with 40 text tokens, at batch 2 (the
CPU benchmark's setting) and a batch that fills the card, in fp32 (TF32 off), TF32, bf16
autocast with fp32 weights, and bf16 weights. FLOPs come from ``torch.utils.flop_counter``;
peaks are 8192^3 matmuls timed in the same run (fp32, TF32, bf16). Times are medians of CUDA
events after warm-up. ``cls rel. diff`` compares ``cls_feats`` with the fp32 run.

Training: one coarse pre-training step (ITC + ITM on 3B fused pairs + MLM, backward, AdamW) in
bf16 autocast, as ``fibervl pretrain coarse`` runs it; samples/s and peak GPU memory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from forward import inputs, pair_batch, write_section  # noqa: E402
from fibervl.config import get_preset  # noqa: E402
from fibervl.modeling.fiber import FiberModel  # noqa: E402
from fibervl.modeling.flops import count_flops  # noqa: E402
from fibervl.tasks.pretrain_coarse import CoarseObjectives, CoarsePretrainTask  # noqa: E402
from fibervl.testing.models import set_fusion_gates  # noqa: E402


def cuda_median_ms(fn, runs: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()`` measured with CUDA events (synchronised per run)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def matmul_peaks(runs: int) -> dict[str, float]:
    """GFLOP/s of an 8192^3 matmul in fp32 (TF32 off), TF32 and bf16, on random data."""
    n, peaks = 8192, {}
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True), ("bf16", torch.bfloat16, False)):
        set_tf32(tf32)
        a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
        peaks[name] = 2 * n**3 / cuda_median_ms(lambda: torch.mm(a, b), runs) / 1e6
    set_tf32(False)
    return peaks


def forward_rows(name: str, batch: int, tokens: int, runs: int, peaks: dict[str, float]) -> list[dict]:
    cfg = get_preset(name)
    torch.manual_seed(0)
    model = set_fusion_gates(FiberModel(cfg).eval().cuda(), 0.5)  # fusion active, as after training
    images, ids, mask = (t.cuda() for t in inputs(cfg, batch, tokens))  # the CPU benchmark's inputs
    gflop = count_flops(model.fuse, images, ids, mask) / 1e9

    def fp32():
        return model.fuse(images, ids, mask)

    def autocast():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model.fuse(images, ids, mask)

    rows = []
    with torch.no_grad():
        set_tf32(False)
        ref = fp32().cls_feats.float()
        modes = [("fp32", fp32, "fp32", False), ("tf32", fp32, "tf32", True), ("bf16 autocast (fp32 weights)", autocast, "bf16", False)]
        for mode, fn, peak, tf32 in modes:
            set_tf32(tf32)
            ms = cuda_median_ms(fn, runs)
            rows.append(dict(mode=mode, ms=ms, peak=peak, out=fn().cls_feats.float()))
        set_tf32(False)
        model16, images16 = model.to(torch.bfloat16), images.bfloat16()

        def bf16():
            return model16.fuse(images16, ids, mask)

        rows.append(dict(mode="bf16 weights", ms=cuda_median_ms(bf16, runs), peak="bf16", out=bf16().cls_feats.float()))
    for row in rows:
        out = row.pop("out")
        row.update(preset=name, batch=batch, gflop=gflop, tflops=gflop / row["ms"],
                   pct=100 * gflop * 1e3 / row["ms"] / peaks[row["peak"]], rel=((out - ref).norm() / ref.norm()).item())
    return rows  # the model goes with this frame and its closures; the caller empties the cache


def train_row(name: str, batch: int, tokens: int, runs: int) -> dict:
    cfg = get_preset(name)
    torch.manual_seed(0)
    model = FiberModel(cfg).train().cuda()
    task = CoarsePretrainTask(CoarseObjectives(), cfg.hidden_size, cfg.text.vocab_size, cfg.text.mask_token_id,
                              (cfg.text.bos_token_id, cfg.text.eos_token_id, cfg.text.pad_token_id)).cuda()
    data = {k: v.cuda() for k, v in pair_batch(cfg, batch, tokens).items()}
    opt = torch.optim.AdamW(list(model.parameters()) + list(task.parameters()), lr=1e-5)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = task.training_step(model, data)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    torch.cuda.reset_peak_memory_stats()
    ms = cuda_median_ms(step, runs)
    row = dict(preset=name, batch=batch, ms=ms, samples=batch / ms * 1e3, mem=torch.cuda.max_memory_allocated() / 2**30)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--presets", nargs="*", default=["fiber-base", "fiber-tiny"], help="presets whose forward is timed")
    parser.add_argument("--forward-batches", type=int, nargs="+", default=[2, 32])
    parser.add_argument("--train", nargs="*", default=["fiber-base:8", "fiber-tiny:32", "fiber-tiny:256"],
                        help="PRESET:BATCH pairs timed as training steps")
    parser.add_argument("--write", type=Path, help="replace the 'gpu' section of this markdown file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    peaks = matmul_peaks(args.runs)
    props = torch.cuda.get_device_properties(0)
    lines = [
        f"Device: {props.name} ({props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB), "
        f"torch {torch.__version__}, CUDA {torch.version.cuda}. Matmul peak (8192^3, random data): "
        f"fp32 {peaks['fp32'] / 1e3:.1f}, TF32 {peaks['tf32'] / 1e3:.0f}, bf16 {peaks['bf16'] / 1e3:.0f} TFLOP/s.",
        f"Fused forward (`FiberModel.fuse`), {args.tokens} tokens, median of {args.runs} CUDA-event timings after warm-up.",
        "",
        "| preset | batch | mode | GFLOP | ms | TFLOP/s | % of peak | cls rel. diff vs fp32 |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in args.presets:
        for batch in args.forward_batches:
            rows = forward_rows(name, batch, args.tokens, args.runs, peaks)
            torch.cuda.empty_cache()
            for r in rows:
                lines.append(f"| {r['preset']} | {r['batch']} | {r['mode']} | {r['gflop']:.0f} | {r['ms']:.2f} | "
                             f"{r['tflops']:.1f} | {r['pct']:.0f} % of {r['peak']} | {r['rel']:.1e} |")
                print(lines[-1], flush=True)
    lines += ["", "Coarse pre-training step (ITC + ITM on 3B fused pairs + MLM, backward, AdamW), bf16 autocast, "
              f"{args.tokens} tokens:", "",
              "| preset | batch | ms/step | samples/s | peak GPU memory (GiB) |", "| --- | ---: | ---: | ---: | ---: |"]
    for spec in args.train:
        name, _, batch = spec.partition(":")
        r = train_row(name, int(batch), args.tokens, max(5, args.runs // 2))
        torch.cuda.empty_cache()
        lines.append(f"| {r['preset']} | {r['batch']} | {r['ms']:.1f} | {r['samples']:.0f} | {r['mem']:.1f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(args.write, "gpu", f"Command: `python bench/gpu.py --write {args.write}`\n\n" + text)


if __name__ == "__main__":
    main()

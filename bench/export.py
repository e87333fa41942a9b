"""Speed of the exported ONNX graphs in onnxruntime against the same parts in PyTorch eager.

    python bench/export.py [--threads 2] [--runs 7] [--presets fiber-tiny fiber-tiny-fine fiber-base] [--batches 1 8] \
        [--write BENCHMARKS.md]

For each preset, every part it has (``fibervl.export.onnx``: the dual encoders of an ITC model,
the detector of a fine-grained one) is exported to a temporary directory, then timed in fp32 on
the CPU at each batch size: ``FiberModel.encode_image`` / ``encode_text`` / ``detect`` (with the
graph's box decoding) under ``torch.no_grad`` against an onnxruntime session with as many
threads. Text is ``--tokens`` long (the last row padded to half). The two take turns run by run
after one warm-up each, so a busy minute of a shared host slows both alike; the table gives the
median. Weights are random with the fusion gates half open (cross-attention in the outputs, as
after training); the max abs diff column compares the two on the timed inputs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from forward import seconds, write_section  # noqa: E402

from fibervl.config import get_preset  # noqa: E402
from fibervl.engine.allocator import keep_freed_memory  # noqa: E402
from fibervl.export.onnx import (  # noqa: E402
    GRAPHS, available_parts, example_inputs, export_onnx, max_tokens, require_onnx,
)
from fibervl.modeling.fiber import FiberModel  # noqa: E402
from fibervl.testing.models import set_fusion_gates  # noqa: E402


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # By default onnxruntime's threads spin for a while after each run; that would steal the
    # cores from the PyTorch run that follows it here.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def alternate(fns: list, runs: int) -> list[tuple[float, float]]:
    """(median, fastest) seconds of each of ``fns``: one warm-up each, then ``runs`` rounds
    taking turns."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, t in zip(fns, times):
            t.append(seconds(fn))
    return [(statistics.median(t), min(t)) for t in times]


def bench_preset(name: str, batches: list[int], tokens: int, runs: int, threads: int, tmp: Path) -> list[dict]:
    torch.manual_seed(0)
    model = set_fusion_gates(FiberModel(get_preset(name)).eval(), 0.5)
    size = model.config.vision.image_size
    rows = []
    for part in available_parts(model):
        path = tmp / f"{name}-{part}.onnx"
        start = time.perf_counter()
        export_onnx(model, part, path)
        took = time.perf_counter() - start
        session = ort_session(path, threads)
        graph_cls, input_names, _ = GRAPHS[part]
        graph = graph_cls(model).eval()
        for batch in batches:
            args = example_inputs(model, part, batch, min(tokens, max_tokens(model, part)), size)
            feed = {n: a.numpy() for n, a in zip(input_names, args)}

            def eager(graph=graph, args=args):
                with torch.no_grad():
                    return graph(*args)

            def onnxruntime(session=session, feed=feed):
                return session.run(None, feed)

            eager_s, ort_s = alternate([eager, onnxruntime], runs)
            ref = eager()
            ref = ref if isinstance(ref, tuple) else (ref,)
            # boxes in pixels are left out: their diff is rounding at the image's scale (docs/export.md)
            diff = max(float(np.abs(o - r.numpy()).max()) for o, r, n in zip(onnxruntime(), ref, GRAPHS[part][2])
                       if n != "boxes")
            rows.append(dict(preset=name, part=part, batch=batch, eager=eager_s, ort=ort_s, diff=diff,
                             export=took, mib=path.stat().st_size / 2**20, size=size))
        path.unlink()
    return rows


def main() -> None:
    keep_freed_memory()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--presets", nargs="+", default=["fiber-tiny", "fiber-tiny-fine", "fiber-base"])
    parser.add_argument("--write", type=Path, help="replace this section of the given markdown file")
    args = parser.parse_args()
    require_onnx()
    import onnxruntime

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [r for name in args.presets
                for r in bench_preset(name, args.batches, args.tokens, args.runs, args.threads, Path(tmp))]
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, {args.threads} thread{'s' if args.threads > 1 else ''} (both), fp32. "
        f"Text {args.tokens} tokens (the detector's "
        f"at most its query length), the last row padded to half. Median of {args.runs} runs after a warm-up, "
        "PyTorch and onnxruntime taking turns; the fastest run too, since on a shared host other jobs only "
        "ever add time (PyTorch's many small parallel regions suffer most when the cores are oversubscribed). "
        f"Host load average (1 min) {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end: above the thread count, other jobs shared the cores.",
        "",
        "| preset | part (image px) | export s, MiB | batch | PyTorch eager median (fastest), ms "
        "| onnxruntime median (fastest), ms | eager / onnxruntime, median (fastest) | max abs diff |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, r in enumerate(rows):
        first = i == 0 or (rows[i - 1]["preset"], rows[i - 1]["part"]) != (r["preset"], r["part"])
        made = f"{r['export']:.0f} s, {r['mib']:.0f}" if first else ""
        px = f" ({r['size']})" if r["part"] != "text" else ""
        (em, ef), (om, of) = r["eager"], r["ort"]
        lines.append(f"| {r['preset']} | {r['part']}{px} | {made} | {r['batch']} | {1e3 * em:.1f} ({1e3 * ef:.1f}) | "
                     f"{1e3 * om:.1f} ({1e3 * of:.1f}) | {em / om:.2f}x ({ef / of:.2f}x) | {r['diff']:.1e} |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(args.write, "export", f"Command: `python bench/export.py {' '.join(sys.argv[1:])}`\n\n" + text)


if __name__ == "__main__":
    main()

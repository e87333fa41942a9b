"""Memory and time of one detector training step with activation checkpointing off and on.

    python bench/activation_checkpointing.py [--preset fiber-base-fine] [--size 384] [--batch 1] [--write BENCHMARKS.md]

Each setting runs in a fresh process: build the model (``set_activation_checkpointing`` on or
off) and a batch, note the resident memory, run a training step (``model.detect`` + the detector
loss on random boxes + backward), and report the peak resident memory above that baseline
(``ru_maxrss``: activations kept for backward, gradients, temporaries) and the time of a second
step. fp32 on the CPU; the official recipe uses checkpointing to fit 800 x 1333 inputs on one GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from detector_step import _batch  # noqa: E402
from forward import write_section  # noqa: E402

from fibervl.config import get_preset  # noqa: E402
from fibervl.modeling.fiber import FiberModel  # noqa: E402


def resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    config = get_preset(args.preset)
    config = config.replace(vision=dataclasses.replace(config.vision, image_size=args.size))
    torch.manual_seed(0)
    model = FiberModel(config).train()
    model.set_activation_checkpointing(backbone=args.checkpointing == "on", head=args.checkpointing == "on")
    images, ids, mask, targets = _batch(config, args.batch, args.tokens)

    def step() -> float:
        start = time.perf_counter()
        model.zero_grad(set_to_none=False)
        out = model.detect(images, ids, mask)
        sum(model.detector.loss(out, targets, mask).values()).backward()
        return time.perf_counter() - start

    for p in model.parameters():  # gradients exist before the baseline, so they are not counted
        p.grad = torch.zeros_like(p)
    baseline = resident_mib()
    first = step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    second = step()
    print(json.dumps({"peak_above_baseline_mib": peak - baseline, "first_s": first, "second_s": second}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="fiber-base-fine")
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpointing", choices=("on", "off"))
    p.add_argument("--write", type=Path)
    args = p.parse_args()
    if args.checkpointing:
        child(args)
        return
    rows = {}
    for setting in ("off", "on"):
        cmd = [sys.executable, __file__, "--preset", args.preset, "--size", str(args.size), "--batch", str(args.batch),
               "--tokens", str(args.tokens), "--threads", str(args.threads), "--checkpointing", setting]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows[setting] = json.loads(out.strip().splitlines()[-1])
    off, on = rows["off"], rows["on"]
    text = "\n".join([
        f"{args.preset} at {args.size} x {args.size}, batch {args.batch}, {args.tokens} tokens, fp32, "
        f"{args.threads} threads, one process per row.",
        "",
        "| activation checkpointing | peak memory above the model and its gradients (MiB) | step time (s) |",
        "| --- | ---: | ---: |",
        f"| off | {off['peak_above_baseline_mib']:.0f} | {off['second_s']:.2f} |",
        f"| on (backbone blocks, text layers, DyHead blocks) | {on['peak_above_baseline_mib']:.0f} | {on['second_s']:.2f} |",
        "",
        f"Checkpointing keeps {on['peak_above_baseline_mib'] / off['peak_above_baseline_mib']:.0%} of the step's peak "
        f"memory at {on['second_s'] / off['second_s']:.2f}x the time.",
    ])
    print(text)
    if args.write:
        command = f"python bench/activation_checkpointing.py {' '.join(sys.argv[1:])}"
        write_section(args.write, "activation_checkpointing", f"Command: `{command}`\n\n" + text)


if __name__ == "__main__":
    main()

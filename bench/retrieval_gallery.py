"""Memory of a re-ranking gallery: images held as pixels (the old path) against stored prefixes.

    python bench/retrieval_gallery.py [--preset fiber-base] [--size 576] [--images 32] [--write BENCHMARKS.md]

Each row runs in a fresh process, on a gallery of ``--images`` random images at ``--size`` px and
on one 4x as large; the difference, per extra image, of the peak resident memory (``ru_maxrss``)
and of the anonymous memory still held at the end (``RssAnon``: what cannot be paged out to a
file) is what keeping one more image costs:

* ``pixels``: every gallery image transformed and held ([I, 3, S, S] fp32), then the fp32 prefix
  of each image (what re-ranking did before :mod:`fibervl.tasks.gallery`);
* ``rows fp32`` / ``rows bf16``: :func:`~fibervl.tasks.gallery.image_prefix_rows`, images read
  8 at a time, prefixes kept in RAM;
* ``mapped bf16``: the same rows in a memory-mapped file.

The per-image bytes and their extrapolation to COCO's 5,000 test images are exact arithmetic
(``bytes_per_image``), not measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from forward import write_section  # noqa: E402

from fibervl.config import get_preset  # noqa: E402
from fibervl.modeling.fiber import FiberModel  # noqa: E402
from fibervl.tasks.gallery import bytes_per_image, image_prefix_rows  # noqa: E402
from fibervl.tasks.retrieval import load_image_tensors  # noqa: E402


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def child(args) -> None:
    torch.set_num_threads(args.threads)
    cfg = get_preset(args.preset)
    cfg = cfg.replace(vision=dataclasses.replace(cfg.vision, image_size=args.size))
    model = FiberModel(cfg).eval()
    paths = sorted(Path(args.dir).glob("*.png"))
    base = status_mib("VmRSS")
    with torch.no_grad():
        if args.mode == "pixels":
            images = load_image_tensors(paths, args.size)
            kept = [model.image_prefix(images[i:i + 8]) for i in range(0, len(paths), 8)]
        else:
            dtype = torch.float32 if args.mode == "rows fp32" else torch.bfloat16
            with tempfile.TemporaryDirectory() as d:
                kept = image_prefix_rows(model, paths, args.size, batch_size=8, dtype=dtype,
                                         directory=d if args.mode == "mapped bf16" else None)
                anon = status_mib("RssAnon")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.mode in ("pixels", "rows fp32", "rows bf16"):
        anon = status_mib("RssAnon")
    print(json.dumps({"peak": peak - base, "anon": anon, "kept": len(kept)}))


def run_rows(args, count: int) -> dict[str, dict]:
    """Each mode in a fresh process over ``count`` random 640 x 480 images."""
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        g = torch.Generator().manual_seed(0)
        for i in range(count):
            Image.fromarray((torch.rand(480, 640, 3, generator=g) * 255).byte().numpy()).save(Path(d) / f"{i:03d}.png")
        for mode in MODES:
            cmd = [sys.executable, __file__, "--preset", args.preset, "--size", str(args.size), "--threads",
                   str(args.threads), "--mode", mode, "--dir", d]
            rows[mode] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    return rows


MODES = ("pixels", "rows fp32", "rows bf16", "mapped bf16")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="fiber-base")
    p.add_argument("--size", type=int, default=576)
    p.add_argument("--images", type=int, default=16, help="the small gallery; the large one has 4x as many")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mode")
    p.add_argument("--dir")
    p.add_argument("--write", type=Path)
    args = p.parse_args()
    if args.mode:
        child(args)
        return
    small, large = run_rows(args, args.images), run_rows(args, 4 * args.images)
    cfg = get_preset(args.preset)
    model = FiberModel(cfg.replace(vision=dataclasses.replace(cfg.vision, image_size=args.size))).eval()
    pixel_bytes = 3 * args.size * args.size * 4
    per = {"pixels": pixel_bytes + bytes_per_image(model, args.size), "rows fp32": bytes_per_image(model, args.size),
           "rows bf16": bytes_per_image(model, args.size, torch.bfloat16), "mapped bf16": 0}
    extra = 3 * args.images
    lines = [f"{args.preset} at {args.size} px, galleries of {args.images} and {4 * args.images} random 640 x 480 images, "
             "batches of 8, fp32, one process per row. The growth per image is measured (the difference of the two "
             "galleries' peak and end memory over the extra images); the last two columns are arithmetic.",
             "", "| gallery kept as | peak memory growth per image (MB) | anonymous memory growth per image (MB) | "
             "bytes kept per image | RAM for 5,000 images |", "| --- | ---: | ---: | ---: | ---: |"]
    for mode in MODES:
        peak = (large[mode]["peak"] - small[mode]["peak"]) * 2**20 / extra / 1e6
        anon = (large[mode]["anon"] - small[mode]["anon"]) * 2**20 / extra / 1e6
        lines.append(f"| {mode} | {peak:.2f} | {anon:.2f} | {per[mode]:,} | {per[mode] * 5000 / 2**30:.1f} GiB |")
    lines += ["", "`mapped bf16` keeps the rows in a file (5,000 images: "
              f"{bytes_per_image(model, args.size, torch.bfloat16) * 5000 / 2**30:.1f} GiB on disk) that the system pages in "
              "as pairs read them."]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(args.write, "retrieval_gallery",
                      f"Command: `python bench/retrieval_gallery.py {' '.join(sys.argv[1:])}`\n\n" + text)


if __name__ == "__main__":
    main()

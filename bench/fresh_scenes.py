"""What a freshly drawn scene costs the image stage: drawing, rendering, transforming, labelling.

    python bench/fresh_scenes.py [--scenes 640] [--rounds 3] [--write BENCHMARKS.md]

The main job's image stage (``fibervl pretrain image`` with ``data.fresh_scenes``) renders a new
scene for every sample it trains on, in the main process, between steps: 64 a step at the default
preset's settings (128 px, 1-3 objects, plain backgrounds, token labels on the 4 x 4 grid). Here
:class:`fibervl.recipes.image_pretrain.FreshSceneLabels` reads a tiny generated data set's
settings and draws ``--scenes`` items ``--rounds`` times, one thread; the least round is reported
per item and as the seconds a batch of 64 adds to a step. Run it with another checkout's ``src``
first on ``PYTHONPATH`` to time that version.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

# appended, not prepended: a PYTHONPATH naming another checkout's src wins (see the docstring)
sys.path.append(str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from forward import publish_table  # noqa: E402
from fibervl.data import Sample  # noqa: E402
from fibervl.data.processor import Processor  # noqa: E402
from fibervl.data.shapes import ShapesConfig, generate  # noqa: E402
from fibervl.data.shapes.render import render  # noqa: E402
from fibervl.data.shapes.scene import sample_scene, scene_rng  # noqa: E402
from fibervl.data.transforms import train_transforms  # noqa: E402
from fibervl.recipes.image_pretrain import FRESH_SPLIT, FreshSceneLabels, read_image_labels, token_labels  # noqa: E402

BATCH = 64


def least_round_ms(fn, n: int, rounds: int) -> float:
    """The least over ``rounds`` of the mean milliseconds of ``fn(i)`` for i < n (after one call)."""
    fn(0)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, (time.perf_counter() - start) / n * 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", type=Path, default=None, help="put the table in this file's section")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, ShapesConfig(size=20, workers=1, vocab_size=300, min_objects=1, max_objects=3,
                                   backgrounds=("plain",)))
        names, _ = read_image_labels(tmp, "train", ["color", "shape", "size"])
        processor = Processor(train_transforms(128, flip=False))
        data = FreshSceneLabels(tmp, 10**6, names, processor, max_objects=3, grid=4)

        def draw(i: int):
            return sample_scene(scene_rng(data.seed, FRESH_SPLIT, i), i, FRESH_SPLIT, data.size, 1, data.max_objects,
                                data.backgrounds, data.shapes)

        scenes = [draw(i) for i in range(args.scenes)]
        images = [render(s) for s in scenes]
        parts = {
            "draw the scene": draw,
            "render": lambda i: render(scenes[i]),
            "transform (colour jitter, tensor, normalise)": lambda i: processor(
                Sample(sample_id=str(i), image_id=i, image=images[i])),
            "token labels": lambda i: token_labels(scenes[i], 4, data.index),
            "the whole item": lambda i: data[i],
        }
        rows = ["| part | ms a scene | s a batch of 64 |", "| --- | ---: | ---: |"]
        for name, fn in parts.items():
            ms = least_round_ms(fn, args.scenes, args.rounds)
            rows.append(f"| {name} | {ms:.3f} | {ms * BATCH / 1e3:.3f} |")
    publish_table("\n".join(rows), args.write, "fresh_scenes",
                  f"1 thread; the least of {args.rounds} rounds of {args.scenes} scenes")


if __name__ == "__main__":
    main()

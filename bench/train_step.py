"""Coarse pre-training throughput: one optimizer step of ITC + ITM (3B fused) + MLM.

    python bench/train_step.py [--data data/shapes] [--write BENCHMARKS.md]

For each (preset, precision): median seconds of a full training step (forward, backward, AdamW)
on a fixed batch after a warm-up, and samples/s; and the same step with every pass run from the
inputs (no shared unfused prefixes: how the step ran before they were shared, and how the
official code runs it), timed in alternation with it. With ``--data``, also the time to load and
collate one batch of that size from the shapes set (one DataLoader process), so the split
between data loading and compute is visible.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from forward import pair_batch, write_section  # noqa: E402
from fibervl.config import get_preset  # noqa: E402
from fibervl.engine.allocator import keep_freed_memory  # noqa: E402
from fibervl.modeling.fiber import FiberModel  # noqa: E402
from fibervl.tasks.pretrain_coarse import CoarseObjectives, CoarsePretrainTask  # noqa: E402


class FromInputs(torch.nn.Module):
    """The model with its prefixes replaced by the raw inputs: every pass of the step then runs
    both backbones from the pixels and token ids."""

    def __init__(self, model: FiberModel) -> None:
        super().__init__()
        self.inner = model
        self.temperature = model.temperature
        self.itm_logits, self.mlm_logits = model.itm_logits, model.mlm_logits

    def image_prefix(self, images):
        return images

    def text_prefix(self, ids, mask):
        return torch.stack([ids, mask], dim=-1)  # [B, T, 2]: indexed along the batch like states

    def encode_image(self, images=None, image_prefix=None):
        return self.inner.encode_image(image_prefix)

    def encode_text(self, ids, mask, text_prefix=None):
        return self.inner.encode_text(text_prefix[..., 0], text_prefix[..., 1])

    def fuse(self, images, ids, mask, image_prefix=None, text_prefix=None):
        return self.inner.fuse(image_prefix, ids if text_prefix is None else text_prefix[..., 0], mask)


def step_times(preset: str, precision: str, batch_size: int, tokens: int, runs: int) -> tuple[float, float]:
    """Median seconds per step with shared prefixes and with every pass from the inputs."""
    cfg = get_preset(preset)
    model = FiberModel(cfg).train()
    task = CoarsePretrainTask(CoarseObjectives(), cfg.hidden_size, cfg.text.vocab_size, cfg.text.mask_token_id,
                              (cfg.text.bos_token_id, cfg.text.eos_token_id, cfg.text.pad_token_id))
    batch = pair_batch(cfg, batch_size, tokens)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    plain = FromInputs(model)

    def step(m):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = task.training_step(m, batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    step(model)
    step(plain)
    times: dict[str, list[float]] = {"shared": [], "plain": []}
    for _ in range(runs):  # alternated, so that a busy moment of the machine hits both
        for name, m in (("shared", model), ("plain", plain)):
            start = time.perf_counter()
            step(m)
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["shared"]), statistics.median(times["plain"])


def load_time(root: Path, batch_size: int, runs: int) -> float:
    from fibervl.data import ProcessedDataset, Processor, Tokenizer
    from fibervl.data.shapes import ShapesDataset
    from fibervl.data.transforms import train_transforms
    from fibervl.data import PairCollator

    shapes = ShapesDataset(root)
    data = ProcessedDataset(shapes.captions("train"), Processor(train_transforms(128)))
    collate = PairCollator(Tokenizer.from_pretrained(shapes.tokenizer_dir), 40)
    times = []
    for r in range(runs + 1):
        start = time.perf_counter()
        collate([data[(r * batch_size + i) % len(data)] for i in range(batch_size)])
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    keep_freed_memory()  # large tensors re-use memory instead of faulting in fresh pages
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", type=Path, help="a shapes data set, to time data loading too")
    parser.add_argument("--write", type=Path)
    parser.add_argument("--tiny-only", action="store_true", help="skip fiber-base (about 2 minutes a case)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [("fiber-tiny", 32, 24), ("fiber-base", 2, 40)][: 1 if args.tiny_only else 2]
    lines = [f"{args.threads} threads, median of {args.runs} steps after a warm-up; a step is ITC + ITM on 3B "
             "fused pairs + MLM, backward and AdamW.", "",
             "| preset | batch | precision | s/step | samples/s | s/step, every pass from the inputs | speed-up |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for preset, batch, tokens in cases:
        for precision in ("fp32", "bf16"):
            seconds, plain = step_times(preset, precision, batch, tokens, args.runs)
            lines.append(f"| {preset} | {batch} | {precision} | {seconds:.3f} | {batch / seconds:.1f} | {plain:.3f} "
                         f"| {plain / seconds:.2f}x |")
            print(lines[-1], flush=True)
    if args.data:
        seconds = load_time(args.data, 32, args.runs)
        lines += ["", f"Loading and collating a batch of 32 shapes pairs in one process: {seconds:.3f} s "
                  f"({32 / seconds:.0f} samples/s), against the fiber-tiny step above."]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(args.write, "train", f"Command: `python bench/train_step.py --data DIR --write {args.write}`\n\n" + text)


if __name__ == "__main__":
    main()

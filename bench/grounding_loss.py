"""What the fine-grained loss costs a training step: ATSS assignment, token focal loss, box
losses and the word-region term, forward and backward, on ``fiber-tiny-fine``'s anchors.

    python bench/grounding_loss.py [--batch 16 32] [--tokens 40] [--runs 20] [--rounds 3] [--write BENCHMARKS.md]

The main job's fine-grained, grounding, REC and detection stages call
:class:`fibervl.modeling.detection.losses.GroundingLoss` at every step on batches of 16 or 32
images of 1-3 objects (13-51 px) and ``token_align`` 4. Here the predictions are random, the boxes
drawn like the shapes set's, and the median of ``--runs`` calls (after a warm-up) is taken
``--rounds`` times, the least reported: the loss is a few milliseconds of many small kernels, so a
busy moment of a shared host would otherwise decide the number. Run it with another checkout's
``src`` first on ``PYTHONPATH`` to time that version on the same inputs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

# appended, not prepended: a PYTHONPATH naming another checkout's src wins (see the docstring)
sys.path.append(str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from forward import median_time, publish_table  # noqa: E402
from fibervl.config import get_preset  # noqa: E402
from fibervl.modeling.detection.anchors import AnchorGenerator  # noqa: E402
from fibervl.modeling.detection.losses import GroundingLoss, GroundingTarget  # noqa: E402

IMAGE_SIZE = 128
STRIDES = (8, 16, 32, 64, 128)


def random_batch(batch: int, tokens: int, generator: torch.Generator):
    """Per level predictions ``[B, 4, H, W]``, ``[B, 1, H, W]``, ``[B, H*W, T]`` (leaves), the
    anchors, 1-3 boxes an image with phrases of 2-4 tokens, and a text mask of 12-T tokens."""
    sizes = get_preset("fiber-tiny-fine").detection.anchor_sizes
    grids = [(IMAGE_SIZE // s, IMAGE_SIZE // s) for s in STRIDES]
    anchors = AnchorGenerator(strides=STRIDES, sizes=sizes).grid_anchors(grids)
    reg = [torch.randn(batch, 4, h, w, generator=generator).requires_grad_() for h, w in grids]
    ctr = [torch.randn(batch, 1, h, w, generator=generator).requires_grad_() for h, w in grids]
    logits = [torch.randn(batch, h * w, tokens, generator=generator).requires_grad_() for h, w in grids]
    targets = []
    lengths = torch.randint(12, tokens + 1, (batch,), generator=generator)
    for b in range(batch):
        count = int(torch.randint(1, 4, (), generator=generator))
        side = 13 + 38 * torch.rand(count, 1, generator=generator)
        corner = (IMAGE_SIZE - side) * torch.rand(count, 2, generator=generator)
        positive_map = torch.zeros(count, tokens)
        for g in range(count):
            start = int(torch.randint(1, int(lengths[b]) - 4, (), generator=generator))
            positive_map[g, start:start + int(torch.randint(2, 5, (), generator=generator))] = 1.0
        targets.append(GroundingTarget(torch.cat([corner, corner + side], dim=1), positive_map))
    text_mask = (torch.arange(tokens)[None] < lengths[:, None]).float()
    return reg, ctr, logits, anchors, targets, text_mask


def loss_seconds(batch_inputs, align: float, runs: int) -> float:
    reg, ctr, logits, anchors, targets, text_mask = batch_inputs
    loss = GroundingLoss(align_loss_weight=align)
    leaves = reg + ctr + logits

    def step():
        total = sum(loss(reg, ctr, logits, anchors, targets, text_mask).values())
        torch.autograd.grad(total, leaves)

    return median_time(step, runs)  # after one warm-up call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", type=Path, default=None, help="replace this section of a BENCHMARKS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = ["| batch | word-region term | ms (forward + backward) |", "| ---: | --- | ---: |"]
    for batch in args.batch:
        inputs = random_batch(batch, args.tokens, torch.Generator().manual_seed(batch))
        for align in (0.0, 4.0):
            best = min(loss_seconds(inputs, align, args.runs) for _ in range(args.rounds))
            rows.append(f"| {batch} | {'weight 4' if align else 'off'} | {1000 * best:.2f} |")
            print(rows[-1], flush=True)
    publish_table("\n".join(rows), args.write, "grounding_loss",
                  f"{args.threads} threads; the least of {args.rounds} medians of {args.runs} calls")


if __name__ == "__main__":
    main()

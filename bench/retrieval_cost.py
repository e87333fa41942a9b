"""Retrieval cost: dual encoder O(n + m) against all-pairs ITM O(n * m), and re-ranking against k.

    python bench/retrieval_cost.py [--preset fiber-tiny] [--sizes 16 32 64] [--write BENCHMARKS.md]

For n images and n*5 texts (5 captions per image, as in COCO and shapes), random inputs at the
preset's image size: seconds to embed everything with the dual encoder and score all pairs by a
matrix product; seconds to score every pair with the fusion encoder (ITM); and, at the largest
size, seconds of ITC + ITM re-ranking of the top k for several k, also with every fused pass
run from the pixels and token ids (no shared unfused prefixes, as before they were shared and as
the official code does). Single runs after a warm-up (the all-pairs case is long); bf16 autocast
unless ``--precision fp32`` (for CPUs without native bf16, where PyTorch emulates it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from forward import write_section  # noqa: E402
from fibervl.config import get_preset  # noqa: E402
from fibervl.engine.allocator import keep_freed_memory  # noqa: E402
from fibervl.modeling.fiber import FiberModel  # noqa: E402
from fibervl.tasks.retrieval import itm_pair_scores, rerank_scores  # noqa: E402
from train_step import FromInputs  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


@torch.no_grad()
def main() -> None:
    keep_freed_memory()  # large tensors re-use memory instead of faulting in fresh pages
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="fiber-tiny")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    bf16 = args.precision == "bf16"
    torch.set_num_threads(args.threads)
    cfg = get_preset(args.preset)
    model = FiberModel(cfg).eval()
    g = torch.Generator().manual_seed(0)
    size = cfg.vision.image_size

    def inputs(n: int):
        images = torch.randn(n, 3, size, size, generator=g)
        ids = torch.randint(4, cfg.text.vocab_size - 1, (5 * n, 16), generator=g)
        ids[:, 0], ids[:, -1] = cfg.text.bos_token_id, cfg.text.eos_token_id
        return images, ids, torch.ones_like(ids)

    def dual(images, ids, mask):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model.encode_image(images).float() @ model.encode_text(ids, mask).float().t()

    def all_pairs(images, ids, mask):
        pairs = torch.cartesian_prod(torch.arange(images.shape[0]), torch.arange(ids.shape[0]))
        return itm_pair_scores(model, images, ids, mask, pairs, batch_size=64, bf16=bf16)

    dual(*inputs(4)), all_pairs(*inputs(2))  # warm-up
    precision = "bf16 autocast" if bf16 else "fp32"
    lines = [f"{args.preset}, {args.threads} threads, {precision}, 5 captions per image, 16 tokens; one run each.", "",
             "| images n | texts m | dual encoder (n + m passes) s | all-pairs ITM (n x m passes) s | ratio |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    for n in args.sizes:
        batch = inputs(n)
        itc, t_dual = timed(lambda: dual(*batch))
        _, t_all = timed(lambda: all_pairs(*batch))
        lines.append(f"| {n} | {5 * n} | {t_dual:.3f} | {t_all:.2f} | {t_all / t_dual:.0f}x |")
        print(lines[-1], flush=True)
    lines += ["", f"Re-ranking the top k of every query (both directions) at n = {n}, m = {5 * n}:", "",
              "| k | ITM pairs scored | seconds (ITC included) | every pass from the inputs, s | speed-up |",
              "| ---: | ---: | ---: | ---: | ---: |"]
    for k in args.ks:
        counted, times = [], []
        for scoring_model in (model, FromInputs(model)):
            def scorer(pairs, m=scoring_model):
                counted.append(pairs.shape[0])
                return itm_pair_scores(m, batch[0], batch[1], batch[2], pairs, batch_size=64, bf16=bf16)

            times.append(timed(lambda: rerank_scores(dual(*batch), scorer, k))[1])
        lines.append(f"| {k} | {counted[0]} | {times[0]:.2f} | {times[1]:.2f} | {times[1] / times[0]:.1f}x |")
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.write:
        command = f"python bench/retrieval_cost.py --precision {args.precision} --write {args.write}"
        write_section(args.write, "retrieval", f"Command: `{command}`\n\n" + text)


if __name__ == "__main__":
    main()

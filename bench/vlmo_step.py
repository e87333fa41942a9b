"""VLMo pre-training throughput: one optimizer step of each stage on a fixed batch.

    OMP_NUM_THREADS=1 python bench/vlmo_step.py [--threads 1] [--batch 32] [--tokens 24]

Stages (see fibervl.tasks.pretrain_vlmo): ``mim`` (image-only masked image modelling), ``text``
(text-only MLM, attention and vision frozen), ``vl`` (ITC + ITM on 3B fused pairs + MLM, the
coarse task). Prints the median seconds of a full step (forward, backward, AdamW over the
trainable parameters) after one warm-up step, in fp32 and bf16 autocast, and the parameter count.
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

from forward import pair_batch  # noqa: E402
from fibervl.engine.allocator import keep_freed_memory  # noqa: E402
from fibervl.modeling.factory import create_model, preset_config  # noqa: E402
from fibervl.tasks.pretrain_coarse import CoarseObjectives, CoarsePretrainTask  # noqa: E402
from fibervl.tasks.pretrain_vlmo import MimTask, TextMlmTask, set_stage_trainable  # noqa: E402


def step_time(preset: str, stage: str, precision: str, batch_size: int, tokens: int, runs: int) -> float:
    cfg = preset_config(preset)
    torch.manual_seed(0)
    model = create_model(cfg, seed=None).train()
    set_stage_trainable(model, stage)
    specials = (cfg.text.bos_token_id, cfg.text.eos_token_id, cfg.text.pad_token_id)
    if stage == "mim":
        task = MimTask(cfg.hidden_size, cfg.vision.patch_size)
    elif stage == "text":
        task = TextMlmTask(cfg.text.vocab_size, cfg.text.mask_token_id, specials)
    else:
        task = CoarsePretrainTask(CoarseObjectives(), cfg.hidden_size, cfg.text.vocab_size, cfg.text.mask_token_id, specials)
    batch = pair_batch(cfg, batch_size, tokens)
    params = [p for p in list(model.parameters()) + list(task.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = task.training_step(model, batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    step()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    keep_freed_memory()  # large tensors re-use memory instead of faulting in fresh pages
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="vlmo-tiny")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--stages", default="mim,text,vl")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = sum(p.numel() for p in create_model(args.preset).parameters())
    print(f"{args.preset}: {n:,} parameters; batch {args.batch}, {args.tokens} tokens, {args.threads} thread(s)")
    for stage in args.stages.split(","):
        for precision in ("fp32", "bf16"):
            t = step_time(args.preset, stage, precision, args.batch, args.tokens, args.runs)
            print(f"  {stage:5s} {precision}: {t:.3f} s/step  ({args.batch / t:.1f} samples/s)")


if __name__ == "__main__":
    main()

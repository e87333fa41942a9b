"""Does training use the CPU well? Achieved GFLOP/s of one training step against the matmul peak.

    python bench/cpu_efficiency.py [--preset fiber-tiny] [--threads 2] [--runs 5] [--precision auto|fp32|bf16]

Two steps of the main job, at its batch sizes (configs/fiber-tiny_*_shapes.yaml): a coarse
pre-training step (ITC + ITM on 3B fused pairs + MLM, batch 32, 24 tokens) and a VQA fine-tuning
step (every weight trained, batch 32, 20 tokens), each forward + backward + AdamW in the
trainer's forward context (``training_forward``: the precision ``auto`` picks, attention on the
math path). A step's FLOPs are those of its forward and backward as
``torch.utils.flop_counter`` counts them with attention on the math path (matmuls and
convolutions; the optimizer's and the element-wise work count 0), so the ratio is what share of
the step time the machine spends at matmul speed. The peak is the fastest 2048^3 matmul of the
run in the step's precision, sampled before every timed step, so a busy moment of a shared host
lowers both. Random inputs; image loading is not timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from finetune_step import batches  # noqa: E402
from forward import MatmulPeak, pair_batch, seconds  # noqa: E402
from fibervl.config import get_preset  # noqa: E402
from fibervl.engine.allocator import keep_freed_memory  # noqa: E402
from fibervl.engine.precision import resolve_precision, training_forward  # noqa: E402
from fibervl.modeling.fiber import FiberModel  # noqa: E402
from fibervl.tasks.pretrain_coarse import CoarseObjectives, CoarsePretrainTask  # noqa: E402
from fibervl.tasks.vqa import VqaTask  # noqa: E402


def make_step(model, task, batch: dict, precision: str):
    """One training step as a closure, and its forward + backward loss function."""
    optim = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def loss_and_backward():
        with training_forward(precision, torch.device("cpu")):
            loss = task.training_step(model, batch)["loss"]
        loss.backward()

    def step():
        loss_and_backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    return step, loss_and_backward


def step_flops(loss_and_backward, model) -> int:
    """Forward + backward FLOPs of one step (attention on the math path, so it is counted)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loss_and_backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def main() -> None:
    keep_freed_memory()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="fiber-tiny")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: the trainer's choice on this CPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    precision = resolve_precision(args.precision, "cpu")
    peak_name = "bf16" if precision == "bf16" else "fp32"
    peak = MatmulPeak()
    for name in ("fp32", "bf16"):
        for _ in range(3):
            peak.sample(name)

    torch.manual_seed(0)
    cfg = get_preset(args.preset)
    coarse_model = FiberModel(cfg).train()
    coarse_task = CoarsePretrainTask(CoarseObjectives(), cfg.hidden_size, cfg.text.vocab_size, cfg.text.mask_token_id,
                                     (cfg.text.bos_token_id, cfg.text.eos_token_id, cfg.text.pad_token_id))
    vqa_model = FiberModel(cfg.replace(heads=("vqa",))).train()
    cases = [("coarse (ITC + ITM + MLM)", 32, coarse_model, coarse_task, pair_batch(cfg, 32, 24)),
             ("VQA fine-tuning (full)", 32, vqa_model, VqaTask(), batches(vqa_model, "vqa", 32)[0])]
    print(f"{args.threads} threads, precision {precision}; matmul peak fp32 {peak.gflops('fp32'):.0f}, "
          f"bf16 {peak.gflops('bf16'):.0f} GFLOP/s (2048^3, fastest of the run)")
    print("| step | batch | GFLOP (fwd + bwd) | s/step (median) | GFLOP/s | % of the "
          f"{peak_name} peak |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, batch, model, task, data in cases:
        step, loss_and_backward = make_step(model, task, data, precision)
        gflop = step_flops(loss_and_backward, model) / 1e9
        step()  # warm-up
        times = []
        for _ in range(args.runs):
            peak.sample(peak_name)
            times.append(seconds(step))
        median = statistics.median(times)
        rate = gflop / median
        print(f"| {name} | {batch} | {gflop:.1f} | {median:.3f} | {rate:.0f} | "
              f"{100 * rate / peak.gflops(peak_name):.0f} % |", flush=True)
    print(f"peak after the steps: fp32 {peak.gflops('fp32'):.0f}, bf16 {peak.gflops('bf16'):.0f} GFLOP/s")


if __name__ == "__main__":
    main()

"""Training-step cost of fused fine-tuning: full, prefix frozen, frozen prefix cached.

    python bench/finetune_step.py [--preset fiber-tiny] [--threads 2] [--runs 7] [--write BENCHMARKS.md]

One retrieval step (ITC + ITM with hard negatives, batch 32: 96 fused pairs), one VQA step
(batch 32) and one NLVR2 step (batch 16 statements, 32 fused passes) of the task loss, forward +
backward + AdamW, in the trainer's forward context (:func:`training_forward`: the precision
``auto`` picks here, and attention on the math path on the CPU), in three modes: every weight
trained; ``freeze_prefix()`` (backpropagation stops at the first fused block); and the frozen
prefix read from an :class:`ImagePrefixCache` instead of recomputed (what
``data.cache_image_prefix=true`` trains on). One more column times the full step with PyTorch's
fused CPU attention kernel instead, the trainer's choice before. Image loading is not timed (the
cached mode skips it too: add the data time a stage logs). Median of ``--runs`` after a warm-up.
"""

from __future__ import annotations

import argparse
import platform
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fibervl.config import get_preset  # noqa: E402
from fibervl.engine.allocator import keep_freed_memory  # noqa: E402
from fibervl.engine.precision import resolve_precision, training_forward  # noqa: E402
from fibervl.modeling.fiber import FiberModel  # noqa: E402
from fibervl.tasks.nlvr2 import Nlvr2Task  # noqa: E402
from fibervl.tasks.pretrain_coarse import CoarseObjectives, CoarsePretrainTask  # noqa: E402
from fibervl.tasks.vqa import VqaTask  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forward import median_time, write_section  # noqa: E402


def batches(model: FiberModel, task: str, batch: int, tokens: int = 20) -> tuple[dict, dict]:
    """(pixel batch, cached batch) of random inputs for ``task``; the cached one holds the
    frozen prefixes of the same images, as the cache would."""
    size, vocab = model.config.vision.image_size, model.config.text.vocab_size
    g = torch.Generator().manual_seed(0)
    text = {"input_ids": torch.randint(5, vocab - 1, (batch, tokens), generator=g),
            "attention_mask": torch.ones(batch, tokens, dtype=torch.long)}
    images = [torch.randn(batch, 3, size, size, generator=g) for _ in range(2 if task == "nlvr2" else 1)]
    if task == "retrieval":
        extra = {"image_ids": torch.arange(batch)}
        keys = ("images",)
    elif task == "vqa":
        targets = torch.zeros(batch, model.config.vqa_num_answers)
        targets[:, 0] = 1.0
        extra = {"targets": targets, "in_vocab": torch.ones(batch, dtype=torch.bool)}
        keys = ("images",)
    else:
        extra = {"labels": torch.randint(0, 2, (batch,), generator=g)}
        keys = ("images", "images2")
    with torch.no_grad():
        prefixes = [model.image_prefix(x) for x in images]
    pixel = {**text, **extra, **dict(zip(keys, images))}
    cached = {**text, **extra, **dict(zip(("image_prefix", "image2_prefix"), prefixes))}
    return pixel, cached


def step_time(model: FiberModel, task, batch: dict, runs: int, precision: str, fused_kernel: bool = False) -> float:
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        with training_forward(precision, torch.device("cpu")):
            # an inner sdpa_kernel context overrides the math path the training context chose
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]) if fused_kernel else nullcontext():
                loss = task.training_step(model, batch)["loss"]
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    return median_time(step, runs)


def main() -> None:
    keep_freed_memory()  # large tensors re-use memory instead of faulting in fresh pages
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="fiber-tiny")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--write", type=Path, help="replace this section of the given markdown file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    precision = resolve_precision("auto", "cpu")
    rows = []
    for task, batch in (("retrieval", 32), ("vqa", 32), ("nlvr2", 16)):
        torch.manual_seed(0)
        model = FiberModel(get_preset(args.preset).replace(heads=("itc", "itm", "vqa", "nlvr2"))).train()
        cfg = model.config
        task_obj = {"retrieval": lambda: CoarsePretrainTask(CoarseObjectives(mlm=0.0), cfg.hidden_size, cfg.text.vocab_size,
                                                            cfg.text.mask_token_id, (0, 1, 2)),
                    "vqa": VqaTask, "nlvr2": Nlvr2Task}[task]()
        pixel, cached = batches(model, task, batch)
        fused_kernel = step_time(model, task_obj, pixel, args.runs, precision, fused_kernel=True)
        full = step_time(model, task_obj, pixel, args.runs, precision)
        model.freeze_prefix()
        frozen = step_time(model, task_obj, pixel, args.runs, precision)
        from_cache = step_time(model, task_obj, cached, args.runs, precision)
        rows.append((task, batch, fused_kernel, full, frozen, from_cache))
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
        f"{precision} (`precision: auto`). `{args.preset}`, 20 text tokens, median of {args.runs} steps after a warm-up "
        "(forward, backward, AdamW; image loading not timed).",
        "",
        "| task step | full, fused attention kernel (s) | full (s) | prefix frozen (s) | frozen, cached prefix (s) | cached vs full |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = {"retrieval": "retrieval (ITC + ITM)", "vqa": "VQA", "nlvr2": "NLVR2"}
    for task, batch, fused_kernel, full, frozen, from_cache in rows:
        lines.append(f"| {names[task]}, batch {batch} | {fused_kernel:.3f} | {full:.3f} | {frozen:.3f} | {from_cache:.3f} | "
                     f"{full / from_cache:.1f}x |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        command = f"python bench/finetune_step.py --preset {args.preset} --threads {args.threads} --runs {args.runs} --write {args.write}"
        write_section(args.write, "finetune", f"Command: `{command}`\n\n" + text)


if __name__ == "__main__":
    main()

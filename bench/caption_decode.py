"""Cached beam search against recomputing the whole prefix at every step (the official decoder).

    python bench/caption_decode.py [--threads 2] [--runs 5] [--beam 5] [--tokens 20] [--write BENCHMARKS.md]

For fiber-tiny and a model with fiber-base's text side (12 layers, 768 wide, fused top 6;
a fiber-tiny-sized Swin so the run stays short, which does not matter here: the image encoder
runs once per image in both modes and is not timed), one image, beam ``--beam``, exactly
``--tokens`` generated tokens (EOS banned until then, so both modes do the same work). Fusion is
switched on (alphas 0.5). Times are medians of ``--runs`` after a warm-up; the captions of both
modes are checked to be identical.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from forward import median_time, write_section  # noqa: E402

from fibervl.config import FusionConfig, get_preset  # noqa: E402
from fibervl.engine.allocator import keep_freed_memory  # noqa: E402
from fibervl.modeling.fiber import FiberModel  # noqa: E402
from fibervl.tasks.decoding import DecodeConfig, generate  # noqa: E402
from fibervl.testing.models import set_fusion_gates  # noqa: E402


def models() -> dict[str, FiberModel]:
    tiny = get_preset("fiber-tiny")
    base_text = dataclasses.replace(get_preset("fiber-base").text, vocab_size=tiny.text.vocab_size,
                                    mask_token_id=tiny.text.mask_token_id)
    base_like = tiny.replace(name="fiber-base text", text=base_text, fusion=FusionConfig(num_layers=6),
                             vision=dataclasses.replace(tiny.vision, depths=(1, 1, 6, 2)))
    out = {}
    for cfg in (tiny, base_like):
        torch.manual_seed(0)
        out[cfg.name] = set_fusion_gates(FiberModel(cfg).eval(), 0.5)
    return out


def bench(name: str, model: FiberModel, beam: int, tokens: int, runs: int) -> dict:
    cfg = model.config
    torch.manual_seed(1)
    with torch.no_grad():
        image = model.caption_image(torch.randn(1, 3, cfg.vision.image_size, cfg.vision.image_size))
    t = cfg.text

    def run(use_cache: bool):
        dc = DecodeConfig(beam_size=beam, max_length=tokens, min_length=tokens, use_cache=use_cache)
        return generate(model, image, dc, t.bos_token_id, t.eos_token_id, t.pad_token_id, (t.mask_token_id,))

    same = [d.tokens for d in run(True)] == [d.tokens for d in run(False)]
    cached = median_time(lambda: run(True), runs)
    recomputed = median_time(lambda: run(False), runs)
    return dict(name=name, layers=t.num_layers, width=t.hidden_size, fused=len(cfg.fused_text_layers()),
                image_tokens=image.shape[1], cached=cached, recomputed=recomputed, same=same)


def main() -> None:
    keep_freed_memory()  # large tensors re-use memory instead of faulting in fresh pages
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--write", type=Path, help="replace this section of the given markdown file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [bench(name, m, args.beam, args.tokens, args.runs) for name, m in models().items()]
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, fp32. "
        f"One image, beam {args.beam}, {args.tokens} generated tokens, median of {args.runs} after a warm-up "
        "(image encoder not timed: it runs once in both modes).",
        "",
        "| model | text layers x width (fused) | image tokens | recompute prefix (s) | KV cache (s) | speed-up | same captions |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['layers']} x {r['width']} ({r['fused']}) | {r['image_tokens']} | "
                     f"{r['recomputed']:.3f} | {r['cached']:.3f} | {r['recomputed'] / r['cached']:.1f}x | "
                     f"{'yes' if r['same'] else 'NO'} |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        command = (f"python bench/caption_decode.py --threads {args.threads} --runs {args.runs} --beam {args.beam} "
                   f"--tokens {args.tokens} --write {args.write}")
        write_section(args.write, "caption", f"Command: `{command}`\n\n" + text)


if __name__ == "__main__":
    main()

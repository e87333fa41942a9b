"""FIBER, ALBEF and VLMo side by side (``fibervl run --model all``): the same data, the same
number of image-text pre-training steps, the same task recipes.

The table has, per family: parameters (all, and those only fused inputs use), forward FLOPs of
one fused image-text pair (``fibervl.modeling.flops.count_flops``, attention included), pre-training samples/s (the
median over the pre-training log of the image-text stage) and the retrieval / VQA / NLVR2
results of the main job.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch

from ..modeling.factory import create_model
from ..modeling.flops import count_flops
from .stages import write_json_atomic

COMPARED_TASKS = ("retrieval", "vqa", "nlvr2")
# the stage whose log gives the image-text pre-training throughput
THROUGHPUT_STAGE = {"fiber": "coarse", "albef": "pretrain", "vlmo": "pretrain/vl"}


def fused_pair_flops(model, image_size: int, text_len: int = 16) -> int:
    """Forward FLOPs of ``model.fuse`` on one image and one ``text_len``-token text."""
    model = model.eval()
    images = torch.zeros(1, 3, image_size, image_size)
    ids = torch.full((1, text_len), 5, dtype=torch.long)
    mask = torch.ones(1, text_len, dtype=torch.long)
    return count_flops(model.fuse, images, ids, mask)


def _median_samples_per_s(run_dir: Path) -> float | None:
    f = run_dir / "metrics.jsonl"
    if not f.is_file():
        return None
    rates = [json.loads(line).get("samples_per_s") for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    rates = [r for r in rates if isinstance(r, (int, float))]
    return statistics.median(rates) if rates else None


def family_row(family: str, out: Path, results: dict) -> dict:
    model_dir = out / "stages" / ("coarse" if family == "fiber" else "pretrain") / "model"
    model = create_model(model_dir)
    params = sum(p.numel() for p in model.parameters())
    parts = model.fusion_parameters()
    fusion = sum(v for k, v in parts.items() if k != "caption_proj")  # FIBER's caption projection is not fusion
    row = {
        "family": family, "model": model.config.name, "parameters": params, "fusion_parameters": fusion,
        "fused_pair_gflops": fused_pair_flops(model, model.config.vision.image_size) / 1e9,
        "pretrain_samples_per_s": _median_samples_per_s(out / "stages" / THROUGHPUT_STAGE[family]),
    }
    for task in COMPARED_TASKS:
        r = results["tasks"].get(task)
        row[task] = r["value"] if r else None
        row[f"{task}_baseline"] = r["baseline_value"] if r else None
    row["pretrain_seconds"] = sum(v for k, v in results["stages"].items()
                                  if k in ("coarse-itc", "coarse", "pretrain"))
    return row


def comparison_markdown(rows: list[dict], metrics: dict[str, str]) -> str:
    def num(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    head = ["family", "preset", "parameters", "fusion parameters", "GFLOPs / fused pair", "pre-train samples/s",
            "pre-train s"] + [f"{t} ({metrics.get(t, '')})" for t in COMPARED_TASKS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["family"], r["model"], f"{r['parameters']:,}", f"{r['fusion_parameters']:,}",
                 num(r["fused_pair_gflops"], ".3f"), num(r["pretrain_samples_per_s"], ".1f"),
                 num(r["pretrain_seconds"], ".0f")]
        cells += [f"{num(r[t], '.2f')} (baseline {num(r[t + '_baseline'], '.2f')})" for t in COMPARED_TASKS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_comparison(out: Path, per_family: dict[str, dict], echo=print) -> Path:
    rows = [family_row(f, out / f, r) for f, r in per_family.items()]
    metrics = {}
    for r in per_family.values():
        for t in COMPARED_TASKS:
            if t in r["tasks"]:
                metrics[t] = r["tasks"][t]["metric"].split(" (")[0]
    write_json_atomic(out / "comparison.json", {"rows": rows, "metrics": metrics})
    table = comparison_markdown(rows, metrics)
    text = ["# FIBER, ALBEF and VLMo on the same data", "",
            "Same data set, same number of image-text pre-training steps, same task recipes and steps; "
            "every number measured on the test split. Fusion parameters: those only fused inputs use "
            "(FIBER: the cross-attention in both backbones; ALBEF: the cross-attention of its fusion layers; "
            "VLMo: the vision-language experts).", "", table, ""]
    (out / "comparison.md").write_text("\n".join(text), encoding="utf-8")
    echo("\n" + table)
    return out / "comparison.md"

"""The README.md written into a generated shapes directory."""

from __future__ import annotations

import os
from pathlib import Path

from .vocab import COLOR_NAMES, HELD_OUT_SHAPES, SHAPES, SIZE_NAMES


def _row(name: str, d: dict, keys) -> str:
    return f"| {name} | " + " | ".join(f"{d[k]:.2f}" for k in keys) + " |"


def render_readme(meta: dict, baselines: dict) -> str:
    cfg = meta["config"]
    lines = [
        "# shapes: the embedded grounded data set of fibervl",
        "",
        f"Written by `fibervl data shapes --out DIR --size {cfg['size']} --seed {cfg['seed']}` "
        f"({cfg['image_size']} px {cfg['image_format']} images) in {meta['generation_seconds']} s "
        f"with {cfg['workers']} worker process(es) on a machine with {os.cpu_count()} CPU cores "
        "(images, every annotation file, tokenizer and baselines).",
        "",
        f"- shapes ({len(SHAPES)}): {', '.join(SHAPES)}",
        f"- colours ({len(COLOR_NAMES)}): {', '.join(COLOR_NAMES)}; sizes: {', '.join(SIZE_NAMES)}",
        f"- held out of fine-grained training (zero-shot): **{', '.join(HELD_OUT_SHAPES)}**. They appear, named, "
        "in captions, VQA, NLVR2 and webdataset text of every split. The train files of boxes "
        "(`detection/instances_train.json`, grounding, referring expressions) leave out every image "
        "that shows one (the zero-shot detection protocol: an unlabelled object would be trained as "
        "background), and the train detection file has no category for them. "
        "The val and test files of boxes have every image and all classes "
        "(category field `seen` is false for the held-out ones): val is scored as test is.",
        "- captions: five per image from different templates (a list of the objects, a relation, counts, "
        "colours, sizes, the background). In scenes with up to three (colour, shape) groups every caption "
        "goes on to name every group by colour and shape (\"two shapes: a red star and a blue ring\"), so "
        "that a caption tells its image from the others as a COCO caption does.",
        f"- tokenizer: byte-level BPE, {meta['tokenizer_vocab_size']} ids, in `tokenizer/tokenizer.json`",
        "",
        "## Files and counts",
        "",
        "| split | " + " | ".join(next(iter(meta["splits"].values())).keys()) + " |",
        "| --- " * (1 + len(next(iter(meta["splits"].values())))) + "|",
    ]
    for split, c in meta["splits"].items():
        lines.append(f"| {split} | " + " | ".join(str(v) for v in c.values()) + " |")
    lines += [
        "",
        "Layout: `images/{split}/shapes_{split}_{image_id:012d}." + cfg["image_format"] + "`, "
        "`captions/dataset_shapes.json` (Karpathy split file), `vqa/v2_OpenEnded_shapes_{split}_questions.json` + "
        "`vqa/v2_shapes_{split}_annotations.json` (VQAv2), `nlvr2/{split}.json` + `nlvr2/images/` (NLVR2), "
        "`mdetr_annotations/final_shapes_{grounding,refexp}_{split}.json` (MDETR style), "
        "`detection/instances_{split}.json` (COCO), `webdataset/shapes-train-*.tar` (webdataset). "
        "Read them with `fibervl.data.shapes.ShapesDataset(DIR)`.",
        "",
        "## Baselines a model must beat",
        "",
        "VQA accuracy (VQAv2 metric, %). chance: a uniformly random train answer; majority: the most common "
        "train answer; prefix prior: the most common train answer per question type; text-only prior: the "
        "most common train answer per exact question text (falling back to the prefix prior).",
        "",
    ]
    lines += [
        "chance within type: a random train answer of the question's answer type. Yes/no answers are "
        "balanced 50/50 per template, yet always answering \"yes\" scores above 50: the VQA metric gives "
        "partial credit when 1 or 2 of the 10 annotators said yes to a \"no\" question.",
        "",
    ]
    keys = ("chance", "chance_within_type", "majority", "prefix_prior", "text_only_prior")
    nlvr2_keys = ("chance", "majority", "prefix_prior", "text_only_prior")
    for split, b in baselines.items():
        v = b["vqa"]
        lines += [f"### {split}: VQA ({v['questions']} questions, {v['answer_vocabulary']} answers)", "",
                  "| answer type | chance | chance within type | majority | prefix prior | text-only prior |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name in ("all", "yes/no", "number", "other"):
            if name in v:
                lines.append(_row(f"{name} ({v[name]['count']})", v[name], keys))
        n = b["nlvr2"]
        lines += ["", f"### {split}: NLVR2 ({n['items']} statements, {n['true_fraction']:.1f} % true)", "",
                  "| chance | majority | prefix prior | text-only prior |", "| --- | --- | --- | --- |",
                  "| " + " | ".join(f"{n[k]:.2f}" for k in nlvr2_keys) + " |", ""]
        r = b["refexp"]
        lines += [f"### {split}: referring expressions ({r['expressions']}): a random object of the image "
                  f"is right {r['random_object']:.2f} % of the time", ""]
    return "\n".join(lines) + "\n"


def write_readme(root: Path, meta: dict, baselines: dict) -> Path:
    path = Path(root) / "README.md"
    path.write_text(render_readme(meta, baselines), encoding="utf-8")
    return path

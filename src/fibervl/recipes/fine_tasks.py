"""``finetune`` / ``evaluate`` / ``predict`` for the three fine-grained tasks (``ground``,
``refexp``, ``detect``); :mod:`.grounding`, :mod:`.refexp` and :mod:`.detection` expose them.

    fibervl finetune ground  --config configs/fiber-tiny_fine_shapes.yaml model.init=RUN/model train.run_dir=...
    fibervl evaluate ground  model.init=RUN/model data.root=data/shapes data.eval_split=test
    fibervl predict  ground  --model RUN/model --tokenizer data/shapes/tokenizer --image x.jpg --text "a red star" [--phrases "red star"]
    fibervl predict  refexp  --model RUN/model --tokenizer ... --image x.jpg --text "the small red star"
    fibervl predict  detect  --model RUN/model --tokenizer ... --image x.jpg --classes "star,heart,circle"

``finetune`` trains the task's data alone (the fine pre-training recipe with one source switched
on) starting from ``model.init`` (usually a ``pretrain fine`` model); ``evaluate`` loads
``model.init`` and prints the task's metrics on ``data.eval_split`` (detection: seen classes, and
zero-shot AP on the held-out names of ``data.zero_shot_split``, when the data set holds some
out of training). ``predict`` prints JSON with boxes in the pixels of the image as shown (EXIF orientation
applied) and writes a PNG with labelled boxes (``--out``, default
``runs/predict-<task>/<image stem>_<task>.png`` under the current directory).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from .common import model_tokenizer, parse_run_cli
from ..data import build_positive_map, load_image
from ..data.collate import pad_images
from ..data.samples import Sample
from ..data.shapes import ShapesDataset
from ..data.transforms import eval_transforms
from ..experiment import load_tokenizer
from ..modeling.fiber import FiberModel
from ..tasks.grounding import SIZE_DIVISIBILITY, detect_with_prompt, make_processor, prompt_chunks, rank_phrase_boxes
from .fine_pretrain import FineConfig, evaluate_all, possible_evaluations, print_metrics, run, sizes_of

# task -> (training sources switched on, evaluations)
TASKS = {
    "ground": (("grounding",), ("grounding",)),
    "refexp": (("refexp",), ("refexp",)),
    "detect": (("detection",), ("detection", "zero_shot")),
}
SOURCES = ("grounding", "refexp", "detection")


def _task_config(task: str, argv: list[str]) -> FineConfig:
    cfg = parse_run_cli(FineConfig, argv)
    train_sources, _ = TASKS[task]
    cfg.data = dataclasses.replace(cfg.data, **{s: s in train_sources for s in SOURCES})
    return cfg


def finetune(task: str, argv: list[str]) -> int:
    cfg = _task_config(task, argv)
    print_metrics(run(cfg, eval_which=TASKS[task][1])["eval"])
    return 0


def evaluate(task: str, argv: list[str]) -> int:
    cfg = _task_config(task, argv)
    if not cfg.model.init:
        raise SystemExit("evaluate needs model.init=DIR (a saved fine-grained model)")
    model = FiberModel.from_pretrained(cfg.model.init).eval()
    tokenizer = load_tokenizer(cfg.data)
    image_size, max_len = sizes_of(cfg.data, model.config)
    shapes = ShapesDataset(cfg.data.root)
    metrics = evaluate_all(model, tokenizer, cfg.data, shapes, image_size, max_len,
                           possible_evaluations(shapes, TASKS[task][1]))
    print_metrics(metrics)
    return 0


# ---- predict ---------------------------------------------------------------------------------

def _predict_args(task: str, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"fibervl predict {task}")
    p.add_argument("--model", required=True, help="a saved fine-grained model directory")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory, for a model directory without its own tokenizer/ (default: MODEL/tokenizer)")
    p.add_argument("--image", required=True)
    if task == "detect":
        p.add_argument("--classes", required=True, help='comma-separated class names, e.g. "star,heart"')
        p.add_argument("--threshold", type=float, default=0.3, help="lowest score printed and drawn")
        p.add_argument("--top", type=int, default=0, help="only the K highest-scoring boxes (0: every box above --threshold)")
        p.add_argument("--chunk-size", type=int, default=40)
    else:
        p.add_argument("--text", required=True)
        if task == "ground":
            p.add_argument("--phrases", default="", help="comma-separated phrases of --text (default: the whole text)")
            p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--normalization", default="imagenet", choices=("imagenet", "official"))
    p.add_argument("--out", default="", help="PNG to write (default: runs/predict-<task>/<image stem>_<task>.png)")
    return p.parse_args(argv)


def _load_image(path: str, image_size: int, normalization: str):
    """-> (pixel batch [1, 3, H, W] padded, (h, w) network input size, PIL original as shown).

    Read as every command reads images (:func:`~fibervl.data.load_image`): EXIF orientation
    applied, so boxes are in the pixels the user sees; 16-bit and alpha images converted as in
    training; a broken file is a DataError naming it."""
    original = load_image(path)
    processed = make_processor(eval_transforms(image_size), normalization)(
        Sample(sample_id=str(path), image_id=0, image=original, width=original.width, height=original.height))
    pixels, _ = pad_images([processed.pixel_values], SIZE_DIVISIBILITY)
    return pixels, tuple(processed.pixel_values.shape[1:]), original


def _to_original(boxes: torch.Tensor, in_size, original: Image.Image) -> list[list[float]]:
    sy, sx = original.height / in_size[0], original.width / in_size[1]
    return [[round(v, 1) for v in b] for b in (boxes * torch.tensor([sx, sy, sx, sy])).tolist()]


def draw_boxes(image: Image.Image, boxes: list[list[float]], labels: list[str], path: str | Path) -> None:
    """Write ``image`` with each xyxy box outlined and labelled to a PNG at ``path``."""
    canvas = image.copy()
    draw = ImageDraw.Draw(canvas)
    colours = ["red", "lime", "blue", "yellow", "magenta", "cyan", "orange", "white"]
    for k, (box, label) in enumerate(zip(boxes, labels)):
        c = colours[k % len(colours)]
        draw.rectangle(box, outline=c, width=2)
        tx, ty = box[0] + 2, max(0, box[1] - 11)
        w = draw.textlength(label)
        draw.rectangle([tx - 1, ty, tx + w + 1, ty + 10], fill="black")
        draw.text((tx, ty), label, fill=c)
    canvas.save(path, format="PNG")


def _phrase_spans(text: str, phrases: list[str]) -> list[tuple[int, int]]:
    spans = []
    for ph in phrases:
        start = text.find(ph)
        if start < 0:
            raise SystemExit(f"phrase {ph!r} does not occur in the text {text!r}")
        spans.append((start, start + len(ph)))
    return spans


def predict(task: str, argv: list[str]) -> int:
    args = _predict_args(task, argv)
    model = FiberModel.from_pretrained(args.model).eval()
    tokenizer = model_tokenizer(args.model, args.tokenizer)
    image_size = model.config.vision.image_size
    max_len = model.config.detection.max_query_len
    if task == "detect":
        names = [c.strip() for c in args.classes.split(",") if c.strip()]
        if not names:
            raise ValueError(f"--classes names no class: {args.classes!r} (give e.g. --classes \"star,heart\")")
    pixels, in_size, original = _load_image(args.image, image_size, args.normalization)
    out_png = args.out or _default_out(task, args.image)
    if task == "detect":
        categories = dict(enumerate(names, start=1))
        chunks = prompt_chunks(categories, list(categories), tokenizer, max_len, args.chunk_size)
        boxes, scores, labels = detect_with_prompt(model, pixels, [in_size], chunks)[0]
        keep = scores >= args.threshold
        if args.top > 0:  # the K best of those above the threshold
            best = scores.masked_fill(~keep, float("-inf")).argsort(descending=True)[:args.top]
            keep = torch.zeros_like(keep).index_fill_(0, best, True) & keep
        boxes = _to_original(boxes[keep], in_size, original)
        dets = [{"class": categories[int(lb)], "score": round(float(s), 4), "box": b}
                for b, s, lb in zip(boxes, scores[keep], labels[keep])]
        result = {"image": args.image, "classes": names, "detections": dets}
        draw_boxes(original, [d["box"] for d in dets], [f"{d['class']} {d['score']:.2f}" for d in dets], out_png)
    else:
        text = args.text
        phrases = [p.strip() for p in getattr(args, "phrases", "").split(",") if p.strip()] or [text]
        top_k = getattr(args, "top_k", 1)
        tok = tokenizer([text], max_length=max_len)
        pm = build_positive_map(tok.offsets[0], [[s] for s in _phrase_spans(text, phrases)], tok.input_ids.shape[1])
        empty = [ph for ph, row in zip(phrases, pm) if row.sum() == 0]
        if empty:
            raise SystemExit(f"phrases {empty} fall outside the first {max_len} tokens")
        batch = {"images": pixels, "input_ids": tok.input_ids, "attention_mask": tok.attention_mask,
                 "image_sizes": torch.tensor([in_size])}
        ranked = rank_phrase_boxes(model, batch, [pm], top_k=top_k)[0]
        entries = []
        for ph, (boxes, scores) in zip(phrases, ranked):
            entries.append({"phrase": ph, "boxes": _to_original(boxes, in_size, original),
                            "scores": [round(float(s), 4) for s in scores]})
        result = {"image": args.image, "text": text, "phrases": entries}
        drawn = [(b, f"{e['phrase']} {s:.2f}") for e in entries for b, s in zip(e["boxes"], e["scores"])]
        draw_boxes(original, [d[0] for d in drawn], [d[1] for d in drawn], out_png)
    result["png"] = out_png
    print(json.dumps(result))
    if not args.out:
        print(f"fibervl predict {task}: wrote {out_png}", file=sys.stderr)
    return 0


def _default_out(task: str, image: str) -> str:
    """``runs/predict-<task>/<image stem>_<task>.png`` under the current directory: never beside
    the input image, whose folder may be read-only or someone else's data."""
    folder = Path("runs") / f"predict-{task}"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f"{Path(image).stem}_{task}.png")


def commands(task: str) -> dict:
    """The CLI verbs of ``task`` ("ground", "refexp", "detect")."""
    if task not in TASKS:
        raise ValueError(f"unknown fine-grained task {task!r}; known: {sorted(TASKS)}")
    return {
        "finetune": lambda argv: finetune(task, argv),
        "evaluate": lambda argv: evaluate(task, argv),
        "predict": lambda argv: predict(task, argv),
    }

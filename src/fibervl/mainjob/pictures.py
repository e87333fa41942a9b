"""Pictures of the main job's models at work on test images, drawn through the same
``predict`` entry points a user calls (so the report also proves those work on every stage):

* grounding and detection boxes drawn on test images (``fibervl predict ground|detect``);
* retrieval: the top 5 test images of a few test captions (``fibervl predict retrieval``);
* captions and VQA answers beside their images (``fibervl predict caption|vqa``).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from PIL import Image, ImageDraw

from ..data import load_image

THUMB = 160
NUM_EXAMPLES = 6


def _panel(image: Image.Image, lines: list[tuple[str, str]], width: int = THUMB * 2) -> Image.Image:
    """``image`` scaled to THUMB px high, with (text, colour) lines under it."""
    scale = THUMB / image.height
    img = image.convert("RGB").resize((max(1, round(image.width * scale)), THUMB))
    panel = Image.new("RGB", (max(width, img.width), THUMB + 14 * len(lines) + 6), "white")
    panel.paste(img, (0, 0))
    draw = ImageDraw.Draw(panel)
    for k, (text, colour) in enumerate(lines):
        draw.text((2, THUMB + 3 + 14 * k), text[:60], fill=colour)
    return panel


def _grid(panels: list[Image.Image], cols: int, path: Path) -> Path:
    w = max(p.width for p in panels)
    h = max(p.height for p in panels)
    rows = (len(panels) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * (w + 6), rows * (h + 6)), "white")
    for k, p in enumerate(panels):
        canvas.paste(p, ((k % cols) * (w + 6), (k // cols) * (h + 6)))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def _quiet_json(fn, *args) -> dict:
    """Call a ``predict`` command function, returning the JSON it prints."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        fn(*args)
    return json.loads(buf.getvalue().strip().splitlines()[-1])


def grounding_and_detection(ctx, figures: Path) -> dict[str, str]:
    from ..data.shapes import ShapesDataset
    from ..recipes.fine_tasks import predict

    shapes = ShapesDataset(ctx.data_root)
    tokenizer = str(Path(ctx.data_root) / "tokenizer")
    out: dict[str, str] = {}
    work = figures / "work"
    work.mkdir(parents=True, exist_ok=True)
    panels, shown = [], set()
    for sample in shapes.grounding("test"):
        if len(panels) >= NUM_EXAMPLES:
            break
        if sample.image_id in shown:  # one phrase set per image: six different images
            continue
        shown.add(sample.image_id)
        k = len(panels)
        phrases = sorted({sample.text[s:e] for spans in sample.tokens_positive for s, e in spans})
        png = work / f"ground_{k}.png"
        _quiet_json(predict, "ground", ["--model", ctx.stage_model("grounding"), "--tokenizer", tokenizer,
                                        "--image", str(sample.image_path), "--text", sample.text,
                                        "--phrases", ",".join(phrases), "--out", str(png)])
        panels.append(_panel(load_image(png), [(sample.text, "black")]))
    if panels:
        out["phrase grounding: the top box of each phrase on test images"] = str(
            _grid(panels, 3, figures / "grounding.png").relative_to(ctx.out))
    categories = shapes.detection("test").categories
    names = ",".join(categories[c] for c in sorted(categories))
    panels = []
    for k, img in enumerate(shapes.captions("test").images[:NUM_EXAMPLES]):
        png = work / f"detect_{k}.png"
        _quiet_json(predict, "detect", ["--model", ctx.stage_model("detection"), "--tokenizer", tokenizer,
                                        "--image", str(img["image_path"]), "--classes", names,
                                        "--threshold", "0.0", "--top", "3", "--out", str(png)])
        panels.append(_panel(load_image(png), [("the 3 highest-scoring boxes", "black")]))
    if panels:
        out["detection over all ten class names (heart and crescent never trained on) on test images"] = str(
            _grid(panels, 3, figures / "detection.png").relative_to(ctx.out))
    return out


def retrieval_top5(ctx, figures: Path, queries: int = 3, gallery: int = 100) -> dict[str, str]:
    from ..data.shapes import ShapesDataset
    from ..recipes.retrieval import predict

    images = ShapesDataset(ctx.data_root).captions("test").images[:gallery]
    paths = [str(img["image_path"]) for img in images]
    texts = [images[k * (len(images) // queries)]["captions"][0] for k in range(queries)]
    truth = {texts[k]: paths[k * (len(images) // queries)] for k in range(queries)}
    ranked = predict(ctx.stage_model("retrieval"), paths, texts)
    rows = []
    for r in ranked:
        top = r["ranking"][:5]
        thumbs = [_panel(load_image(t["item"]), [("the query's image" if t["item"] == truth[r["query"]] else "",
                                                   "green")], width=THUMB) for t in top]
        row = Image.new("RGB", (5 * (THUMB + 4), thumbs[0].height + 18), "white")
        ImageDraw.Draw(row).text((2, 2), f"query: {r['query']}", fill="black")
        for k, t in enumerate(thumbs):
            row.paste(t, (k * (THUMB + 4), 18))
        rows.append(row)
    path = _grid(rows, 1, figures / "retrieval.png")
    return {f"retrieval: the top 5 of {len(paths)} test images for test captions": str(path.relative_to(ctx.out))}


def captions_and_answers(ctx, figures: Path) -> dict[str, str]:
    from ..data.shapes import ShapesDataset
    from ..recipes import vqa
    from ..recipes.caption import _predict_command as caption_predict

    shapes = ShapesDataset(ctx.data_root)
    questions: dict = {}
    for s in shapes.vqa("test"):
        questions.setdefault(s.image_id, []).append(s)
    panels = []
    for img in shapes.captions("test").images[:NUM_EXAMPLES]:
        cap = _quiet_json(caption_predict, ["--model", ctx.stage_model("caption"), "--image", str(img["image_path"])])
        lines = [(f"caption: {cap['caption']}", "blue")]
        for q in questions.get(img["image_id"], [])[:2]:
            pred = vqa.predict(ctx.stage_model("vqa"), img["image_path"], q.text)
            truth = max(set(q.answers), key=q.answers.count)
            colour = "green" if pred["answer"] == truth else "red"
            lines += [(f"Q: {q.text}", "black"), (f"A: {pred['answer']} (truth: {truth})", colour)]
        panels.append(_panel(load_image(img["image_path"]), lines))
    path = _grid(panels, 3, figures / "captions_vqa.png")
    return {"generated captions and VQA answers on test images (green: right, red: wrong)": str(path.relative_to(ctx.out))}


def draw_all(ctx, figures: Path) -> dict[str, str]:
    from ..modeling.pretrained import loaded_once

    out: dict[str, str] = {}
    done = set(ctx.runner.records)
    with loaded_once():  # each stage's model is read once, not once per picture
        if {"grounding", "detection"} <= done:
            out.update(grounding_and_detection(ctx, figures))
        if "retrieval" in done:
            out.update(retrieval_top5(ctx, figures))
        if {"caption", "vqa"} <= done:
            out.update(captions_and_answers(ctx, figures))
    return out

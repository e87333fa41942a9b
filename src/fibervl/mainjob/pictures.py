"""Pictures of the main job's models at work on test images, drawn with the same
:func:`fibervl.load` and predictors ``fibervl predict`` runs (so the report also proves those
work on every stage):

* grounding and detection boxes drawn on test images (``fibervl predict ground|detect``);
* retrieval: the top 5 test images of a few test captions (``fibervl predict retrieval``);
* captions and VQA answers beside their images (``fibervl predict caption|vqa``).
"""

from __future__ import annotations

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


def _load(ctx, stage: str, task: str):
    """(model, processor) of a stage's model; the data set's tokenizer for a model directory
    written without its own."""
    from ..predict import load

    directory = Path(ctx.stage_model(stage))
    own = (directory / "tokenizer").is_dir()
    return load(directory, task=task, tokenizer=None if own else Path(ctx.data_root) / "tokenizer")


def grounding_and_detection(ctx, figures: Path) -> dict[str, str]:
    from ..data.shapes import ShapesDataset
    from ..predict import DetectionPredictor, GroundingPredictor

    shapes = ShapesDataset(ctx.data_root)
    out: dict[str, str] = {}
    model, processor = _load(ctx, "grounding", "ground")

    def fits(text: str) -> bool:  # a caption whose phrases all lie within the model's query length
        return len(processor.tokenizer.encode(text)[0]) <= processor.max_length

    samples, shown = [], set()
    for sample in shapes.grounding("test"):
        if len(samples) == NUM_EXAMPLES:
            break
        if sample.image_id not in shown and fits(sample.text):  # one phrase set per image
            shown.add(sample.image_id)
            samples.append(sample)
    if samples:
        predictor = GroundingPredictor(model, processor)
        images = predictor.open([str(s.image_path) for s in samples])
        phrases = [sorted({s.text[a:b] for spans in s.tokens_positive for a, b in spans}) for s in samples]
        results = predictor.predict(images, [s.text for s in samples], phrases)
        panels = [_panel(predictor.draw(r, im), [(s.text, "black")]) for r, im, s in zip(results, images, samples)]
        out["phrase grounding: the top box of each phrase on test images"] = str(
            _grid(panels, 3, figures / "grounding.png").relative_to(ctx.out))
    categories = shapes.detection("test").categories
    model, processor = _load(ctx, "detection", "detect")
    predictor = DetectionPredictor(model, processor, [categories[c] for c in sorted(categories)], threshold=0.0, top=3)
    images = predictor.open([str(img["image_path"]) for img in shapes.captions("test").images[:NUM_EXAMPLES]])
    if images:
        panels = [_panel(predictor.draw(r, im), [("the 3 highest-scoring boxes", "black")])
                  for r, im in zip(predictor.predict(images), images)]
        out["detection over all ten class names (heart and crescent never trained on) on test images"] = str(
            _grid(panels, 3, figures / "detection.png").relative_to(ctx.out))
    return out


def retrieval_top5(ctx, figures: Path, queries: int = 3, gallery: int = 100) -> dict[str, str]:
    from ..data.shapes import ShapesDataset
    from ..predict import Gallery, RetrievalPredictor

    images = ShapesDataset(ctx.data_root).captions("test").images[:gallery]
    paths = [str(img["image_path"]) for img in images]
    texts = [images[k * (len(images) // queries)]["captions"][0] for k in range(queries)]
    truth = {texts[k]: paths[k * (len(images) // queries)] for k in range(queries)}
    model, processor = _load(ctx, "retrieval", "retrieval")
    ranked = RetrievalPredictor(model, processor, Gallery.build(model, processor, images=paths), top=5).predict(texts)
    rows = []
    for r in ranked:
        thumbs = [_panel(load_image(t["item"]), [("the query's image" if t["item"] == truth[r["query"]] else "",
                                                   "green")], width=THUMB) for t in r["ranking"]]
        row = Image.new("RGB", (5 * (THUMB + 4), thumbs[0].height + 18), "white")
        ImageDraw.Draw(row).text((2, 2), f"query: {r['query']}", fill="black")
        for k, t in enumerate(thumbs):
            row.paste(t, (k * (THUMB + 4), 18))
        rows.append(row)
    path = _grid(rows, 1, figures / "retrieval.png")
    return {f"retrieval: the top 5 of {len(paths)} test images for test captions": str(path.relative_to(ctx.out))}


def captions_and_answers(ctx, figures: Path) -> dict[str, str]:
    from ..data.shapes import ShapesDataset
    from ..predict import CaptionPredictor, VqaPredictor

    shapes = ShapesDataset(ctx.data_root)
    questions: dict = {}
    for s in shapes.vqa("test"):
        questions.setdefault(s.image_id, []).append(s)
    shown = shapes.captions("test").images[:NUM_EXAMPLES]
    captioner = CaptionPredictor(*_load(ctx, "caption", "caption"))
    answerer = VqaPredictor(*_load(ctx, "vqa", "vqa"))
    images = captioner.open([str(img["image_path"]) for img in shown])
    asked = [(im, q) for img, im in zip(shown, images) for q in questions.get(img["image_id"], [])[:2]]
    answers = iter(answerer.predict([im for im, _ in asked], [q.text for _, q in asked]) if asked else [])
    panels = []
    for img, image, caption in zip(shown, images, captioner.predict(images)):
        lines = [(f"caption: {caption['caption']}", "blue")]
        for q in questions.get(img["image_id"], [])[:2]:
            pred = next(answers)
            truth = max(set(q.answers), key=q.answers.count)
            colour = "green" if pred["answer"] == truth else "red"
            lines += [(f"Q: {q.text}", "black"), (f"A: {pred['answer']} (truth: {truth})", colour)]
        panels.append(_panel(image.image, lines))
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

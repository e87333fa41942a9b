"""``fibervl predict TASK``: the predictors of :mod:`fibervl.predict` on files and folders.

    fibervl predict detect    --model DIR (--image FILE... | --images DIR...) --classes "star,heart"
    fibervl predict ground    --model DIR --images DIR --text "a red star" [--phrases "red star"]
    fibervl predict refexp    --model DIR --image x.jpg --text "the small red star"
    fibervl predict vqa       --model DIR --images DIR --question "what color is the circle?"
    fibervl predict caption   --model DIR --images DIR [--beam 3]
    fibervl predict nlvr2     --model DIR --left a.jpg --right b.jpg --text "..."
    fibervl predict retrieval --model DIR --images DIR --text "a red circle" [--text ...]
    fibervl predict retrieval --model DIR --gallery OUT/gallery --text "a red circle"
    fibervl predict retrieval --model DIR --image x.jpg --texts "a red circle,a blue square"

Prints one JSON object per line (per image; per query for retrieval) and writes a PNG of each
into ``--out DIR`` (default ``runs/predict-TASK``; a ``--out FILE.png`` names the one picture of
a single image), with every line also in ``OUT/predictions.jsonl``. An unreadable image in a
folder gives a line ``{"image", "error"}`` and the exit code 1; the others are predicted. With
``--skip-bad-records`` it is skipped instead: warned about, counted, summed up at the end.
``--model`` is any directory :func:`fibervl.load` reads, or a preset name (random weights, with
a warning; give ``--tokenizer``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..data import DataError
from ..data.errors import SkipLog, handle, skipping_on
from .card import FINE_TASKS

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def build_parser(task: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"fibervl predict {task}", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model directory, run or stage directory, or a preset name")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory or file, for a model directory without tokenizer/ or a preset")
    p.add_argument("--out", default="", help=f"folder for the PNGs and predictions.jsonl (default runs/predict-{task}); "
                                             "FILE.png: the picture of a single image")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu or cuda")
    p.add_argument("--skip-bad-records", action="store_true",
                   help="skip unreadable images (warned about and counted) instead of an error line and exit code 1")
    if task != "nlvr2":
        what = "query image(s)" if task == "retrieval" else "image file(s)"
        p.add_argument("--image", nargs="+", default=[], help=what)
        p.add_argument("--images", nargs="+", default=[], help="folders (their image files) or image files" +
                       (": the gallery to search" if task == "retrieval" else ""))
    if task in FINE_TASKS:
        p.add_argument("--normalization", default=None, choices=("imagenet", "official"),
                       help="image normalisation (default: the model card's; official for converted checkpoints)")
    if task == "detect":
        p.add_argument("--classes", required=True, help='comma-separated class names, e.g. "star,heart"')
        p.add_argument("--threshold", type=float, default=0.3, help="lowest score kept")
        p.add_argument("--top", type=int, default=0, help="only the K best boxes (0: every box above --threshold)")
        p.add_argument("--chunk-size", type=int, default=40, help="most class names in one prompt")
    elif task in ("ground", "refexp"):
        p.add_argument("--text", required=True, help="the text (ground) or referring expression (refexp)")
        if task == "ground":
            p.add_argument("--phrases", default="", help="comma-separated phrases of --text (default: the whole text)")
            p.add_argument("--top-k", type=int, default=1, help="boxes per phrase")
    elif task == "vqa":
        p.add_argument("--question", required=True)
        p.add_argument("--top", type=int, default=5, help="answers listed")
    elif task == "caption":
        p.add_argument("--beam", type=int, default=3, help="beam size (1 = greedy)")
        p.add_argument("--max-length", type=int, default=20, help="most generated tokens")
        p.add_argument("--length-penalty", type=float, default=1.0)
    elif task == "nlvr2":
        p.add_argument("--left", required=True)
        p.add_argument("--right", required=True)
        p.add_argument("--text", required=True, help="the statement")
    elif task == "retrieval":
        p.add_argument("--text", action="append", default=[], help="a text query (repeatable): rank the gallery's images")
        p.add_argument("--texts", default="", help="comma-separated texts: a text gallery, ranked for each --image")
        p.add_argument("--gallery", default="", help="a saved gallery directory to search instead of --images/--texts")
        p.add_argument("--save-gallery", default="", help="where to save a gallery built here (default OUT/gallery)")
        p.add_argument("--rerank-k", type=int, default=16, help="re-rank the ITC top k with ITC + w x ITM (0: ITC only)")
        p.add_argument("--itm-weight", type=float, default=None,
                       help="w in ITC + w x ITM (default: the model card's, chosen on validation by fine-tuning, else 1)")
        p.add_argument("--top", type=int, default=10, help="items listed per query (0: the whole gallery)")
    return p


def image_files(entries: list[str]) -> list[str]:
    """Files as given; folders -> their image files (by suffix), sorted, not recursing."""
    out = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            found = sorted(str(f) for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
            out += found
        else:
            out.append(entry)
    return out


class Output:
    """Where results go: stdout (a JSON line each), ``OUT/predictions.jsonl`` and a PNG each."""

    def __init__(self, task: str, out: str, skip_bad: bool = False) -> None:
        self.task, self.errors, self._names = task, 0, set()
        self.skip_bad, self.skipped = skip_bad, SkipLog()
        if skip_bad:
            skipping_on()
        if out.lower().endswith(".png"):
            self.png_file, self.dir, self.lines = Path(out), Path(out).parent, None
        else:
            self.png_file, self.dir = None, Path(out or f"runs/predict-{task}")
            self.lines = self.dir / "predictions.jsonl"
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.lines is not None:
            self.lines.write_text("", encoding="utf-8")
        self.count = 0

    def png_path(self, stem: str) -> Path:
        if self.png_file is not None:
            if self.count:
                raise ValueError("--out FILE.png names the picture of one image; give a folder for several")
            return self.png_file
        name, k = f"{stem}_{self.task}.png", 1
        while name in self._names:  # the same stem twice (a.jpg, a.png): number them
            k += 1
            name = f"{stem}_{k}_{self.task}.png"
        self._names.add(name)
        return self.dir / name

    def emit(self, result: dict, picture=None, stem: str = "") -> None:
        if picture is not None:
            path = self.png_path(stem)
            picture.save(path, format="PNG")
            result["png"] = str(path)
        line = json.dumps(result, ensure_ascii=False)
        print(line, flush=True)
        if self.lines is not None:
            with open(self.lines, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        self.count += 1

    def error(self, image: str, err: Exception) -> None:
        """An unreadable image: its own line and exit code 1, or with ``--skip-bad-records`` a
        skipped record (warned about and summed up at the end of the run)."""
        if self.skip_bad and isinstance(err, DataError):
            handle(err, True, self.skipped)
            return
        self.errors += 1
        self.emit({"image": image, "error": str(err)})

    def summary(self) -> int:
        where = self.png_file or self.dir
        print(f"fibervl predict {self.task}: {self.count} result(s)" +
              (f", {self.errors} unreadable image(s)" if self.errors else "") +
              (f", {self.skipped.total} unreadable image(s) skipped" if self.skipped.total else "") +
              f"; pictures in {where}", file=sys.stderr)
        return 1 if self.errors else 0


def main(task: str, argv: list[str]) -> int:
    from ..engine.distributed import resolve_device
    from .loading import load

    args = build_parser(task).parse_args(argv)
    per_image = task not in ("nlvr2", "retrieval")
    sources = image_files(args.image) + image_files(args.images) if per_image else []
    if per_image and not sources:
        raise ValueError("give --image FILE or --images DIR")
    model, processor = load(args.model, task=task, tokenizer=args.tokenizer, device=resolve_device(args.device),
                            normalization=getattr(args, "normalization", None))
    output = Output(task, args.out, args.skip_bad_records)
    if task == "retrieval":
        return _retrieval(args, model, processor, output)
    if task == "nlvr2":
        from .nlvr2 import Nlvr2Predictor

        predictor = Nlvr2Predictor(model, processor)
        pair = predictor.open([args.left, args.right])
        result = predictor.predict([pair[0]], [pair[1]], args.text)[0]
        output.emit(result, predictor.draw(result, pair), Path(args.left).stem)
        return output.summary()
    predictor, call = _predictor(task, args, model, processor)
    for start in range(0, len(sources), args.batch_size):  # a batch at a time: lines come as they are ready
        _predict_files(sources[start:start + args.batch_size], processor, call, predictor.draw, output)
    return output.summary()


def _predict_files(paths: list[str], processor, call, draw, output: Output) -> None:
    """``call(images) -> results`` on the readable images of ``paths``; every path gets its line,
    in order (a DataError's message for an unreadable one)."""
    opened = []
    for path in paths:
        try:
            opened.append(processor.open(path))
        except DataError as err:
            opened.append(err)
    images = [item for item in opened if not isinstance(item, DataError)]
    results = iter(call(images) if images else [])
    for path, item in zip(paths, opened):
        if isinstance(item, DataError):
            output.error(path, item)
        else:
            result = next(results)
            output.emit(result, draw(result, item), Path(path).stem)


def _predictor(task: str, args, model, processor):
    """(predictor, images -> results) for the tasks that predict one result per image."""
    from .caption import CaptionPredictor
    from .grounding import DetectionPredictor, GroundingPredictor, RefexpPredictor
    from .vqa import VqaPredictor

    b = args.batch_size
    if task == "detect":
        names = [c.strip() for c in args.classes.split(",") if c.strip()]
        if not names:
            raise ValueError(f"--classes names no class: {args.classes!r} (give e.g. --classes \"star,heart\")")
        p = DetectionPredictor(model, processor, names, args.threshold, args.top, args.chunk_size, batch_size=b)
        return p, p.predict
    if task == "ground":
        p = GroundingPredictor(model, processor, top_k=args.top_k, batch_size=b)
        phrases = [s.strip() for s in args.phrases.split(",") if s.strip()] or [args.text]
        return p, lambda images: p.predict(images, args.text, [phrases] * len(images))
    if task == "refexp":
        p = RefexpPredictor(model, processor, batch_size=b)
        return p, lambda images: p.predict(images, args.text)
    if task == "vqa":
        p = VqaPredictor(model, processor, top=args.top, batch_size=b)
        return p, lambda images: p.predict(images, args.question)
    if task == "caption":
        p = CaptionPredictor(model, processor, beam=args.beam, max_length=args.max_length,
                             length_penalty=args.length_penalty, batch_size=b)
        return p, p.predict
    raise ValueError(f"no per-image predictor for {task!r}")


def _retrieval(args, model, processor, output: Output) -> int:
    from .retrieval import Gallery, RetrievalPredictor

    texts = [t.strip() for t in args.texts.split(",") if t.strip()]
    if sum(map(bool, (args.gallery, args.images, texts))) != 1:
        raise ValueError("give one gallery: --gallery DIR (saved), --images DIR... (images) or --texts (texts)")
    if args.gallery:
        gallery = Gallery.load(args.gallery)
    else:
        gallery = Gallery.build(model, processor, images=image_files(args.images) if args.images else None,
                                texts=texts or None, batch_size=args.batch_size, skip_bad=True)
        saved = gallery.save(args.save_gallery or output.dir / "gallery")
        print(f"fibervl predict retrieval: a gallery of {len(gallery)} {gallery.kind}s saved in {saved}", file=sys.stderr)
    if gallery.kind == "image" and args.image or gallery.kind == "text" and args.text:
        raise ValueError(f"a {gallery.kind} gallery is searched with "
                         f"{'text queries (--text)' if gallery.kind == 'image' else 'image queries (--image)'}")
    predictor = RetrievalPredictor(model, processor, gallery, rerank_k=args.rerank_k, top=args.top,
                                   batch_size=args.batch_size, itm_weight=args.itm_weight)
    if gallery.kind == "image":
        for k, result in enumerate(predictor.predict(args.text)):
            output.emit(result, predictor.draw(result), f"query_{k}")
        return output.summary()
    _predict_files(image_files(args.image), processor, predictor.predict, predictor.draw, output)
    return output.summary()

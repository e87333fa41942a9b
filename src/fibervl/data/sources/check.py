"""``fibervl data check SPEC``: read a data set the way training would and say what is in it and
what is wrong with it.

Each (kind, split) the source holds is read by its ordinary reader with bad records skipped,
so every problem the readers know is found (empty captions, boxes outside the image, unknown
categories, ids that point nowhere, duplicate ids, ...), each named by file and record; then
every image is opened as the processor opens it (missing, unreadable, or of another size than
the annotation says). The report counts samples, images and boxes per split and category.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import replace

from ..errors import DataError, problem_kind, skip_report
from ..image_io import load_image
from ..processor import sync_image_size
from .formats import check_kind, check_paths, format_of, source_splits
from .spec import DataSource

# every problem is kept for the report; past this many a data set is broken beyond listing
MAX_KEPT = 100_000


@contextlib.contextmanager
def _quiet():
    """The readers warn about each skipped record; the report lists them instead."""
    log = logging.getLogger("fibervl.data")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _problem(error: DataError) -> dict:
    return {"file": error.file, "record": None if error.record is None else str(error.record),
            "problem": error.problem, "kind": problem_kind(error.problem)}


def _count_samples(kind: str, reader, samples: list) -> dict:
    """Counts of one (kind, split): samples, images and what the kind has."""
    images = {str(p) for s in samples for p in (s.image_path, s.image2_path) if p is not None}
    images |= {s.image_id for s in samples if s.image_path is None}  # streamed: no file
    out: dict = {"samples": len(samples), "images": len(images)}
    names = getattr(reader, "categories", None) or {}
    if kind in ("detection", "grounding", "refexp"):
        boxes = Counter()
        for s in samples:
            for c in s.category_ids.tolist():
                boxes[names.get(c, str(c)) if c != -1 else "(phrase)"] += 1
        out["boxes"] = sum(boxes.values())
        out["boxes_per_category"] = dict(boxes.most_common())
        if kind == "detection":
            out["categories"] = len(names)
            out["categories_without_boxes"] = sorted(n for n in names.values() if n not in boxes)
            out["images_without_boxes"] = sum(1 for s in samples if not s.num_boxes)
    if kind == "captions":
        out["captions"] = len(samples)
    if kind == "vqa":
        out["answer_types"] = dict(Counter(s.answer_type or "(none)" for s in samples).most_common())
    if kind == "nlvr2":
        out["labels"] = dict(Counter(str(s.label) for s in samples).most_common())
    if getattr(reader, "shards", None) is not None:
        out["shards"] = len(reader.shards)
    return out


def _check_images(samples: list, seen: set, limit: int) -> list[DataError]:
    """Open every image not seen yet (at most ``limit`` per part, 0 = all), as the processor
    does: missing, undecodable, or not the size the annotation says (another aspect ratio)."""
    errors = []
    opened = 0
    for s in samples:
        for path in (s.image_path, s.image2_path):
            if path is None or str(path) in seen:
                continue
            if limit and opened >= limit:
                return errors
            seen.add(str(path))
            opened += 1
            try:
                image = load_image(path, record=s.sample_id)
                if path == s.image_path:
                    sync_image_size(image, s, path)
            except DataError as err:
                errors.append(err)
    return errors


def check_source(source: DataSource, kinds: list[str] | None = None, splits: list[str] | None = None,
                 images: bool = True, image_limit: int = 0) -> dict:
    """The report of ``source``: ``{"source", "parts": [{"kind", "split", counts..., "problems":
    [{"file", "record", "problem", "kind"}]}], "errors"}`` (``errors``: problems in all)."""
    fmt = format_of(source)
    kinds = list(kinds or fmt.kinds)
    splits = list(splits or source_splits(source))
    parts, seen_images = [], set()
    for kind in kinds:
        check_kind(source, kind, "data check")
        for split in splits:
            check_paths(source, source.split or split)
            part: dict = {"kind": kind, "split": source.split or split}
            with _quiet(), skip_report(keep=MAX_KEPT) as report:
                try:
                    reader = fmt.open(source, kind, source.split or split, True)
                    # a stream's decoded images are dropped as it is read: shards never sit in memory
                    samples = [replace(s, image=None) if fmt.stream else s for s in reader]
                except DataError as err:  # the whole file is unusable
                    part.update(samples=0, problems=[_problem(err)])
                    parts.append(part)
                    continue
            # several ODinW data sets (odinw/*/valid): a part each, as each is scored on its own
            members = getattr(reader, "datasets", None) or {None: reader}
            for name, member in members.items():
                own = samples if name is None else list(member)
                problems = [_problem(e) for e in report.errors
                            if name is None or str(e.file) == str(getattr(member, "file", ""))]
                member_part = dict(part) if name is None else {**part, "dataset": name}
                member_part.update(_count_samples(kind, member, own))
                if images and not fmt.stream:
                    problems += [_problem(e) for e in _check_images(own, seen_images, image_limit)]
                member_part["problems"] = problems
                parts.append(member_part)
    return {"source": str(source), "parts": parts, "errors": sum(len(p["problems"]) for p in parts)}


def format_report(report: dict, listed: int = 10) -> str:
    """The report as text: counts per part, then its problems grouped by kind, the first
    ``listed`` of each kind named by file and record."""
    lines = [f"source {report['source']}"]
    for part in report["parts"]:
        split = part["split"] or "(one split)"
        counts = ", ".join(f"{part[k]} {k}" for k in ("samples", "images", "captions", "boxes", "categories", "shards")
                           if k in part)
        dataset = f" of {part['dataset']}" if part.get("dataset") else ""
        lines.append(f"{part['kind']}{dataset}, split {split}: {counts}")
        for key in ("boxes_per_category", "answer_types", "labels"):
            if part.get(key):
                lines.append(f"  {key.replace('_', ' ')}: " + ", ".join(f"{n} {c}" for n, c in part[key].items()))
        if part.get("categories_without_boxes"):
            lines.append(f"  categories without boxes: {', '.join(part['categories_without_boxes'])}")
        if part.get("images_without_boxes"):
            lines.append(f"  images without boxes: {part['images_without_boxes']}")
        by_kind: dict[str, list[dict]] = {}
        for p in part["problems"]:
            by_kind.setdefault(p["kind"], []).append(p)
        for kind, problems in by_kind.items():
            lines.append(f"  {len(problems)} x {kind}")
            for p in problems[:listed]:
                where = (p["file"] or "<no file>") + (f" [record {p['record']}]" if p["record"] is not None else "")
                lines.append(f"    {where}: {p['problem']}")
            if len(problems) > listed:
                lines.append(f"    ... and {len(problems) - listed} more")
        if 0 < part.get("images", 0) <= len(by_kind.get("image file not found", [])):
            lines.append("  none of its images is there: is IMAGES, the folder after the second ':' of the "
                         "SPEC, the right one? (default: the annotations' folder)")
    n = report["errors"]
    lines.append(f"{n} problem{'s' if n != 1 else ''} found" if n else "no problems found")
    return "\n".join(lines)

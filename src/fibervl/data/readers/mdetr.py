"""MDETR-style COCO JSON with captions: Flickr30k Entities, RefCOCO/+/g, the shapes set.

Each ``images`` entry is one (image, sentence) pair: ``{"id", "file_name", "height",
"width", "caption", "original_img_id", ...}``; each annotation is a box of that pair with
``bbox`` (xywh pixels), ``category_id`` and ``tokens_positive`` (list of [start, end]
character spans of the caption naming the box).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..boxes import checked_xywh_box
from ..errors import DataError
from ..samples import Sample
from .common import DEFAULT_MAX_TEXT_CHARS, Reader, check_format, check_text, load_json, require, require_size


class MdetrReader(Reader):
    """One Sample per (image, sentence): text = caption, boxes with their tokens_positive.

    A bad box or span makes the whole record bad (a grounding record with a box missing
    would teach the wrong thing): it raises, or is skipped and counted when ``skip_bad``.
    A box with an empty ``tokens_positive`` is not bad: the caption names no word of it.
    """

    def __init__(self, annotation_file: str | Path, image_root: str | Path, skip_bad: bool = False,
                 max_text_chars: int = DEFAULT_MAX_TEXT_CHARS):
        super().__init__(skip_bad, max_text_chars)
        self.file, self.image_root = Path(annotation_file), Path(image_root)
        data = load_json(self.file)
        images = require(data, "images", self.file, None, list)
        anns = require(data, "annotations", self.file, None, list)
        check_format(images, "caption", self.file, "an MDETR annotation file (images with captions)")
        self.categories = {c["id"]: c.get("name", str(c["id"])) for c in data.get("categories", []) if isinstance(c, dict) and "id" in c}
        by_image: dict[object, list[tuple[int, dict]]] = {}
        for n, ann in enumerate(anns):
            try:
                by_image.setdefault(require(ann, "image_id", self.file, f"annotation {n}", (int, str)), []).append((n, ann))
            except DataError as err:
                self._bad(err)
        seen: dict[object, int] = {}  # record id -> its index
        for n, img in enumerate(images):
            try:
                self._add(n, img, by_image, seen)
            except DataError as err:
                self._bad(err)
        # A box of no record would otherwise be dropped without a word.
        ids = {i.get("id") for i in images if isinstance(i, dict) and isinstance(i.get("id"), (int, str))}
        for image_id, boxes in by_image.items():
            if image_id not in ids:
                for k, _ in boxes:
                    self._bad(DataError(self.file, f"image_id {image_id} is not in images", f"annotation {k}"))

    def _add(self, n, img, by_image, seen):
        f = self.file
        rec_id = require(img, "id", f, f"image {n}", (int, str))
        rid = f"image {n} (id {rec_id})"
        if rec_id in seen:  # both records would get the same boxes
            raise DataError(f, f"duplicate image id {rec_id} (first: image {seen[rec_id]})", rid)
        seen[rec_id] = n
        file_name = require(img, "file_name", f, rid, str)
        width, height = require_size(img, "width", f, rid), require_size(img, "height", f, rid)
        caption, _ = check_text(require(img, "caption", f, rid), f, rid, self.max_text_chars, truncate=False)
        boxes, cats, spans = [], [], []
        for k, ann in by_image.get(rec_id, []):
            arid = f"{rid} annotation {k}"
            boxes.append(checked_xywh_box(require(ann, "bbox", f, arid), width, height, f, arid))
            cat = ann.get("category_id", -1)
            if self.categories and cat != -1 and cat not in self.categories:
                raise DataError(f, f"unknown category id {cat}", arid)
            cats.append(int(cat))
            box_spans = []
            for span in require(ann, "tokens_positive", f, arid, list):
                if not (isinstance(span, (list, tuple)) and len(span) == 2 and all(isinstance(v, int) for v in span)):
                    raise DataError(f, f"bad tokens_positive span {span!r}: expected [start, end]", arid)
                s, e = span
                if not 0 <= s < e <= len(caption):
                    raise DataError(f, f"tokens_positive span {span} outside the caption of {len(caption)} characters", arid)
                box_spans.append((s, e))
            # An empty list is a box the caption does not name (MDETR and GLIP keep it: a ground-truth
            # box whose anchors get no positive token), so it stays, with an all-zero positive map row.
            spans.append(box_spans)
        original = img.get("original_img_id", img.get("original_id", rec_id))
        self.samples.append(Sample(
            sample_id=str(rec_id), image_id=original, image_path=self.image_root / file_name,
            width=width, height=height, text=caption,
            boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            category_ids=torch.tensor(cats, dtype=torch.int64), tokens_positive=spans,
            dataset=img.get("dataset_name", "mdetr"),
            meta={k: img[k] for k in ("tokens_positive_eval", "sentence_id", "template", "num_objects") if k in img},
        ))

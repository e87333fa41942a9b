"""COCO captions: ``annotations/captions_{train,val}2017.json`` (and the 2014 files).

Format: ``{"images": [{"id": 391895, "file_name": "000000391895.jpg", "width", "height", ...}],
"annotations": [{"id": 770337, "image_id": 391895, "caption": "A man with a red helmet ..."}]}``.
One file per split; ``file_name`` is relative to the split's image folder (``coco/val2017``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .common import DEFAULT_MAX_TEXT_CHARS, CaptionReader, check_format, check_text, load_json, require


class CocoCaptionsReader(CaptionReader):
    """One Sample per caption (sample_id = the annotation id); ``sample.captions`` lists every
    caption of its image. Images keep the file's order, captions their order within an image.

    The unit skipped is the annotation, i.e. one (image, caption) pair; a bad image record, and
    an image no annotation describes, are one more each.
    """

    def __init__(self, annotation_file: str | Path, image_root: str | Path, skip_bad: bool = False,
                 max_text_chars: int = DEFAULT_MAX_TEXT_CHARS, dataset: str = "coco"):
        super().__init__(skip_bad, max_text_chars)
        self.file, self.image_root = Path(annotation_file), Path(image_root)
        data = load_json(self.file)
        images = require(data, "images", self.file, None, list)
        annotations = require(data, "annotations", self.file, None, list)
        check_format(annotations, "caption", self.file, "a COCO captions file")
        # image id -> [record id, file name, (sample id, caption) pairs, annotations naming it]
        by_id: dict[int | str, list] = {}
        for n, img in enumerate(images):
            try:
                self._read_image(n, img, by_id)
            except DataError as err:
                self._bad(err)
        seen: set = set()
        for n, ann in enumerate(annotations):
            try:
                self._read_annotation(n, ann, by_id, seen)
            except DataError as err:
                self._bad(err)
        for image_id, (rid, name, captions, mentions) in by_id.items():
            if captions:
                self._add_image(image_id, self.image_root / name, captions, dataset)
            elif not mentions:  # (an image whose captions were all bad is already counted)
                self._bad(DataError(self.file, "image has no captions", rid))

    def _read_image(self, n: int, img: object, by_id: dict) -> None:
        image_id = require(img, "id", self.file, f"image {n}", (int, str))
        rid = f"image {n} (id {image_id})"
        name = require(img, "file_name", self.file, rid, str)
        if image_id in by_id:
            raise DataError(self.file, f"duplicate image id {image_id} (first: {by_id[image_id][0]})", rid)
        by_id[image_id] = [rid, name, [], 0]

    def _read_annotation(self, n: int, ann: object, by_id: dict, seen: set) -> None:
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        rid = f"annotation {n}" + (f" (id {ann_id})" if ann_id is not None else "")
        if ann_id is not None:
            if not isinstance(ann_id, (int, str)):
                raise DataError(self.file, f"key 'id' should be int/str, got {type(ann_id).__name__}", rid)
            if ann_id in seen:
                raise DataError(self.file, f"duplicate annotation id {ann_id}", rid)
            seen.add(ann_id)
        image_id = require(ann, "image_id", self.file, rid, (int, str))
        if image_id not in by_id:
            raise DataError(self.file, f"image_id {image_id} is not in images", rid)
        entry = by_id[image_id]
        entry[3] += 1
        text, cut = check_text(require(ann, "caption", self.file, rid), self.file, rid, self.max_text_chars)
        self.truncated += cut
        entry[2].append((str(ann_id if ann_id is not None else n), text))

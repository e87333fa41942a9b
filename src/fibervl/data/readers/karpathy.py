"""COCO / Flickr30k captions in Karpathy's split file (``dataset_coco.json``).

Format: ``{"images": [{"filepath": "val2014", "filename": "COCO_val2014_...jpg",
"split": "train|restval|val|test", "cocoid": 391895, "sentences": [{"raw": "..."}]}]}``.
Flickr30k's file has no ``filepath`` and no ``cocoid``; its images sit directly under the image
root, and an image's id is its Flickr photo id (the file name, ``1000092795.jpg``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .common import DEFAULT_MAX_TEXT_CHARS, CaptionReader, check_format, check_text, coco_image, load_json, require


class KarpathyCaptions(CaptionReader):
    """One Sample per (image, caption); ``sample.captions`` lists all captions of the image.

    annotation_file: the Karpathy JSON; image_root: directory the ``filepath/filename`` of
    each image is relative to. ``split="train"`` also takes ``restval`` unless
    ``include_restval=False``. The unit skipped is the (image, caption) pair: an image keeps
    its good captions when one of them is bad.
    """

    def __init__(self, annotation_file: str | Path, image_root: str | Path, split: str,
                 include_restval: bool = True, skip_bad: bool = False,
                 max_text_chars: int = DEFAULT_MAX_TEXT_CHARS, dataset: str = "coco"):
        super().__init__(skip_bad, max_text_chars)
        self.file, self.image_root, self.split = Path(annotation_file), Path(image_root), split
        wanted = {split} | ({"restval"} if split == "train" and include_restval else set())
        data = load_json(self.file)
        images = require(data, "images", self.file, None, list)
        check_format(images, "sentences", self.file, "a Karpathy split file (dataset_coco.json)")
        for n, img in enumerate(images):
            try:
                if require(img, "split", self.file, n, str) not in wanted:
                    continue
                self._read_image(n, img, dataset)
            except DataError as err:
                self._bad(err)
        if not self.samples and not self.skipped:
            raise DataError(self.file, f"no images of split {split!r} (splits are named train/restval/val/test)")

    def _read_image(self, n: int, img: dict, dataset: str) -> None:
        filename = require(img, "filename", self.file, n, str)
        rid = f"{n} ({filename})"
        filepath = img.get("filepath", "")
        if not isinstance(filepath, str):
            raise DataError(self.file, f"key 'filepath' should be str, got {type(filepath).__name__}", rid)
        image_id = img.get("cocoid", _photo_id(filename, img.get("imgid", n)))
        sentences = require(img, "sentences", self.file, rid, list)
        if not sentences:
            raise DataError(self.file, "image has no sentences", rid)
        captions = []
        for k, s in enumerate(sentences):
            try:
                sid = f"{rid} sentence {k}"
                text, cut = check_text(require(s, "raw", self.file, sid), self.file, sid, self.max_text_chars)
            except DataError as err:
                self._bad(err)
                continue
            self.truncated += cut
            captions.append((f"{image_id}_{k}", text))
        if captions:
            # a COCO image not at filepath/filename may be in COCO 2017's folders, renamed
            path = coco_image(self.image_root / filepath / filename, self.image_root, img.get("cocoid"))
            self._add_image(image_id, path, captions, dataset)


def _photo_id(filename: str, fallback):
    """The image id of an image without ``cocoid``: Flickr30k's photo id, the file name's
    number (``1000092795.jpg``), which Flickr30k Entities and caption results use; Karpathy's
    ``imgid`` (a position in the file) otherwise."""
    stem = Path(filename).stem
    return int(stem) if stem.isdigit() else fallback

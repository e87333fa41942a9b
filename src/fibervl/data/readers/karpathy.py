"""COCO / Flickr30k captions in Karpathy's split file (``dataset_coco.json``).

Format: ``{"images": [{"filepath": "val2014", "filename": "COCO_val2014_...jpg",
"split": "train|restval|val|test", "cocoid": 391895, "sentences": [{"raw": "..."}]}]}``.
Flickr30k's file has no ``filepath``; its images sit directly under the image root.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from ..samples import Sample
from .common import DEFAULT_MAX_TEXT_CHARS, Reader, check_text, load_json, require


class KarpathyCaptions(Reader):
    """One Sample per (image, caption); ``sample.captions`` lists all captions of the image.

    annotation_file: the Karpathy JSON; image_root: directory the ``filepath/filename`` of
    each image is relative to. ``split="train"`` also takes ``restval`` unless
    ``include_restval=False``.
    """

    def __init__(self, annotation_file: str | Path, image_root: str | Path, split: str,
                 include_restval: bool = True, skip_bad: bool = False,
                 max_text_chars: int = DEFAULT_MAX_TEXT_CHARS, dataset: str = "coco"):
        super().__init__(skip_bad, max_text_chars)
        self.file, self.image_root, self.split = Path(annotation_file), Path(image_root), split
        wanted = {split} | ({"restval"} if split == "train" and include_restval else set())
        data = load_json(self.file)
        images = require(data, "images", self.file, None, list)
        self.images: list[dict] = []  # one entry per image kept: {"image_id", "image_path", "captions"}
        for n, img in enumerate(images):
            try:
                if require(img, "split", self.file, n, str) not in wanted:
                    continue
                self._add_image(n, img, dataset)
            except DataError as err:
                self._bad(err)
        if not self.samples and not self.skipped:
            raise DataError(self.file, f"no images of split {split!r} (splits are named train/restval/val/test)")

    def _add_image(self, n: int, img: dict, dataset: str) -> None:
        filename = require(img, "filename", self.file, n, str)
        rid = f"{n} ({filename})"
        image_id = img.get("cocoid", img.get("imgid", n))
        sentences = require(img, "sentences", self.file, rid, list)
        if not sentences:
            raise DataError(self.file, "image has no sentences", rid)
        caps = []
        for k, s in enumerate(sentences):
            raw = require(s, "raw", self.file, f"{rid} sentence {k}")
            text, cut = check_text(raw, self.file, f"{rid} sentence {k}", self.max_text_chars)
            self.truncated += cut
            caps.append(text)
        path = self.image_root / img.get("filepath", "") / filename
        self.images.append({"image_id": image_id, "image_path": path, "captions": caps})
        for k, text in enumerate(caps):
            self.samples.append(Sample(sample_id=f"{image_id}_{k}", image_id=image_id, image_path=path,
                                       text=text, captions=caps, dataset=dataset))


    def retrieval_lists(self) -> tuple[list[Path], list[str], list[int], list[list[int]]]:
        """The split as retrieval evaluation wants it.

        Returns (image_paths [I], texts [T], text_to_image [T] index into image_paths,
        image_to_texts [I] lists of indices into texts).
        """
        paths, texts, t2i, i2t = [], [], [], []
        for i, img in enumerate(self.images):
            paths.append(img["image_path"])
            i2t.append([])
            for caption in img["captions"]:
                i2t[-1].append(len(texts))
                t2i.append(i)
                texts.append(caption)
        return paths, texts, t2i, i2t

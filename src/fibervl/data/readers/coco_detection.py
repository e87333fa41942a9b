"""COCO detection JSON (also LVIS, Objects365, ODinW's Roboflow exports).

``{"images": [{"id", "file_name", "width", "height"}], "annotations": [{"image_id",
"category_id", "bbox": [x, y, w, h]}], "categories": [{"id", "name"}]}``. LVIS images have
no ``file_name`` but a ``coco_url``; the file is taken as the URL's last two parts
(``train2017/000000391895.jpg``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..boxes import checked_xywh_box
from ..errors import DataError
from ..samples import Sample
from .common import Reader, check_format, load_json, require, require_size


class CocoDetectionReader(Reader):
    """One Sample per image with boxes [N, 4] xyxy and category_ids [N].

    Here a bad *annotation* (bad box, unknown category) is the unit of skipping: the image
    keeps its other boxes. ``iscrowd`` boxes are left out unless ``keep_crowd`` (they are
    still checked, and kept in :meth:`ground_truth`, where COCO's evaluation ignores what
    they cover). ``categories``: id -> cleaned name, in file order.
    """

    def __init__(self, annotation_file: str | Path, image_root: str | Path, skip_bad: bool = False,
                 keep_crowd: bool = False, keep_empty: bool = True):
        super().__init__(skip_bad)
        self.file, self.image_root = Path(annotation_file), Path(image_root)
        f = self.file
        data = load_json(f)
        self.categories: dict[int, str] = {}
        self.category_meta: dict[int, dict] = {}
        for n, c in enumerate(require(data, "categories", f, None, list)):
            cid = require(c, "id", f, f"category {n}", int)
            if cid in self.categories:  # names are the label space: no guessing which one is meant
                raise DataError(f, f"duplicate category id {cid}", f"category {n}")
            self.categories[cid] = require(c, "name", f, f"category {n}", str)
            self.category_meta[cid] = c
        images: dict[object, dict] = {}
        for n, img in enumerate(require(data, "images", f, None, list)):
            try:
                self._read_image(n, img, images)
            except DataError as err:
                self._bad(err)
        annotations = require(data, "annotations", f, None, list)
        check_format(annotations, "bbox", f, "a COCO detection file")
        self.annotations: list[dict] = []  # every annotation accepted, crowd ones included
        for n, ann in enumerate(annotations):
            try:
                self._read_annotation(n, ann, images, keep_crowd)
            except DataError as err:
                self._bad(err)
        self.images = [img["meta"] for img in images.values()]
        info = data.get("info")
        dataset = info.get("dataset", "coco") if isinstance(info, dict) else "coco"
        for iid, img in images.items():
            if not img["boxes"] and not keep_empty:
                continue
            self.samples.append(Sample(
                sample_id=str(iid), image_id=iid, image_path=self.image_root / img["file_name"],
                width=img["width"], height=img["height"],
                boxes=torch.tensor(img["boxes"], dtype=torch.float32).reshape(-1, 4),
                category_ids=torch.tensor(img["cats"], dtype=torch.int64), dataset=dataset,
                meta={k: v for k, v in img["meta"].items() if k in ("neg_category_ids", "not_exhaustive_category_ids")},
            ))

    def _read_image(self, n: int, img: object, images: dict) -> None:
        f = self.file
        iid = require(img, "id", f, f"image {n}", (int, str))
        rid = f"image {n} (id {iid})"
        if iid in images:
            raise DataError(f, f"duplicate image id {iid}", rid)
        name = img.get("file_name")
        if name is None and isinstance(img.get("coco_url"), str):
            name = "/".join(img["coco_url"].split("/")[-2:])
        if not isinstance(name, str):
            raise DataError(f, "missing key 'file_name' (and no coco_url)", rid)
        w, h = require_size(img, "width", f, rid), require_size(img, "height", f, rid)
        images[iid] = {"file_name": name, "width": w, "height": h, "boxes": [], "cats": [], "meta": img}

    def _read_annotation(self, n: int, ann: object, images: dict, keep_crowd: bool) -> None:
        f = self.file
        rid = f"annotation {n}" + (f" (id {ann['id']})" if isinstance(ann, dict) and "id" in ann else "")
        iid = require(ann, "image_id", f, rid, (int, str))
        if iid not in images:
            raise DataError(f, f"image_id {iid} is not in images", rid)
        cat = require(ann, "category_id", f, rid, int)
        if cat not in self.categories:
            raise DataError(f, f"unknown category id {cat}", rid)
        img = images[iid]
        box = checked_xywh_box(require(ann, "bbox", f, rid), img["width"], img["height"], f, rid)
        self.annotations.append(ann)
        if ann.get("iscrowd", 0) and not keep_crowd:
            return
        img["boxes"].append(box)
        img["cats"].append(cat)

    def ground_truth(self) -> dict:
        """What the reader accepted, as a COCO detection dict (``images``, ``annotations``,
        ``categories``): the ground truth to score detections against. The raw file would
        still hold the records skipped as bad, and perfect detections would score below 100."""
        return {"images": list(self.images), "annotations": list(self.annotations),
                "categories": list(self.category_meta.values())}

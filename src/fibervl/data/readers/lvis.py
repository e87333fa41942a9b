"""LVIS v1 (``lvis_v1_train.json``, ``lvis_v1_val.json``, ``lvis_v1_minival``): COCO detection
JSON with federated labels.

* Images have no ``file_name``: each is found through its ``coco_url`` under the COCO root,
  ``http://images.cocodataset.org/train2017/000000391895.jpg`` ->
  ``COCO_ROOT/train2017/000000391895.jpg`` (LVIS v1 val draws on COCO's train2017 as well as
  val2017). A root without that folder is taken to be the images folder itself.
* Each image lists ``neg_category_ids`` (verified absent) and ``not_exhaustive_category_ids``
  (present, not every instance boxed); each category has a ``frequency`` ("r" / "c" / "f").
  These drive the federated evaluation (:func:`fibervl.metrics.lvis.lvis_ap`).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import DataError
from .coco_detection import CocoDetectionReader

LABEL_LISTS = ("neg_category_ids", "not_exhaustive_category_ids")
COCO_SPLIT_FOLDER = re.compile(r"(train|val|test)20\d\d")  # train2017, val2017, val2014, ...


class LvisReader(CocoDetectionReader):
    """One Sample per image (images with no box too: their negative labels are scored), boxes
    xyxy and category ids; ``meta`` holds the image's ``neg_category_ids`` and
    ``not_exhaustive_category_ids``. ``federated``: scored by the LVIS rules.

    An image whose label lists are missing or name unknown categories is a bad record (its
    detections could not be judged).
    """

    federated = True

    def __init__(self, annotation_file: str | Path, coco_root: str | Path, skip_bad: bool = False):
        self._folders: dict[str, bool] = {}  # COCO split folder -> whether the root holds it
        self._root = Path(coco_root)
        self._root_folders: list[Path] | None = None
        super().__init__(annotation_file, coco_root, skip_bad=skip_bad, keep_crowd=False, keep_empty=True)
        for c in self.category_meta.values():
            if c.get("frequency") not in ("r", "c", "f"):
                raise DataError(self.file, f"category {c['id']} ({c.get('name')}) has no frequency r / c / f: "
                                           "not an LVIS file (read it as coco:)")

    def _read_image(self, n: int, img: object, images: dict) -> None:
        super()._read_image(n, img, images)
        iid = img["id"]
        rid = f"image {n} (id {iid})"
        for key in LABEL_LISTS:
            ids = img.get(key)
            if not isinstance(ids, list) or not all(isinstance(c, int) for c in ids):
                del images[iid]
                raise DataError(self.file, f"{key!r} should be a list of category ids, got {ids!r}", rid)
            unknown = sorted(set(ids) - set(self.categories))
            if unknown:
                del images[iid]
                raise DataError(self.file, f"{key!r} names unknown category ids {unknown[:5]}", rid)
        if "file_name" not in img and isinstance(img.get("coco_url"), str):
            images[iid]["file_name"] = self._coco_path(img["coco_url"])

    def _coco_path(self, url: str) -> str:
        """``.../val2017/X.jpg`` -> ``val2017/X.jpg`` when the root holds ``val2017/``, else ``X.jpg``
        (the root is the images folder itself) unless the root holds another COCO split folder:
        then it is the COCO root missing ``val2017/``, and the error names the path it should have."""
        folder, name = url.rstrip("/").split("/")[-2:]
        if folder not in self._folders:
            self._folders[folder] = (self._root / folder).is_dir()
        if self._folders[folder] or any(COCO_SPLIT_FOLDER.fullmatch(p.name) for p in self._subfolders()):
            return f"{folder}/{name}"
        return name

    def _subfolders(self) -> list[Path]:
        if self._root_folders is None:
            self._root_folders = [p for p in self._root.iterdir() if p.is_dir()] if self._root.is_dir() else []
        return self._root_folders

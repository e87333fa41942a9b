"""NLVR2 JSON lines (``train.json``, ``dev.json``, ``test1.json``): one statement per line.

Record: ``{"identifier": "dev-850-0-0", "sentence": "...", "label": "True", "directory": 13}``
(``directory`` in train only). Images, NLVR2's layout under ``image_root``:
``train/{directory}/train-10171-0-img0.png`` and ``dev/dev-850-0-img0.png``; the image
name is the identifier without its last field, then ``-img0`` (left) / ``-img1`` (right).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError
from ..samples import Sample
from .common import DEFAULT_MAX_TEXT_CHARS, Reader, check_text, require


class Nlvr2Reader(Reader):
    """One Sample per statement: image_path = left, image2_path = right, label = truth.

    file:        the JSON-lines file; image_root: the directory holding the split folders.
    image_split: folder name of the split's images (default: the identifier's first field).
    image_ext:   ".png" for NLVR2 (".jpg" for the shapes set).
    """

    def __init__(self, file: str | Path, image_root: str | Path, image_ext: str = ".png",
                 image_split: str | None = None, skip_bad: bool = False,
                 max_text_chars: int = DEFAULT_MAX_TEXT_CHARS, dataset: str = "nlvr2"):
        super().__init__(skip_bad, max_text_chars)
        self.file, self.image_root = Path(file), Path(image_root)
        if not self.file.is_file():
            raise DataError(self.file, "annotation file not found")
        with open(self.file, encoding="utf-8-sig", errors="strict") as fh:  # -sig: a byte order mark is fine
            try:
                lines = fh.read().splitlines()
            except UnicodeDecodeError as exc:
                raise DataError(self.file, f"not UTF-8 text: {exc}") from None
        for line_no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(self.file, f"invalid JSON: {exc.msg}", f"line {line_no}") from None
                self._add(line_no, record, image_ext, image_split, dataset)
            except DataError as err:
                self._bad(err)

    def _add(self, line_no, r, ext, image_split, dataset):
        f = self.file
        ident = require(r, "identifier", f, f"line {line_no}", str)
        rid = f"line {line_no} ({ident})"
        parts = ident.split("-")
        if len(parts) != 4:
            raise DataError(f, f"identifier {ident!r} is not split-set-pair-sentence", rid)
        text, cut = check_text(require(r, "sentence", f, rid), f, rid, self.max_text_chars, what="sentence")
        self.truncated += cut
        raw_label = require(r, "label", f, rid)
        label = {"true": True, "false": False}.get(str(raw_label).lower())
        if label is None:
            raise DataError(f, f"label must be True or False, got {raw_label!r}", rid)
        folder = self.image_root / (image_split or parts[0])
        if "directory" in r:
            folder = folder / str(r["directory"])
        stem = "-".join(parts[:3])
        self.samples.append(Sample(
            sample_id=ident, image_id=stem, image_path=folder / f"{stem}-img0{ext}",
            image2_path=folder / f"{stem}-img1{ext}", text=text, label=label, dataset=dataset,
            meta={k: r[k] for k in ("template", "left_image_id", "right_image_id") if k in r},
        ))

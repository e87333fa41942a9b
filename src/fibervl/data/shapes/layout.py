"""Readers for a generated shapes directory: the files are in the real formats, so these
are the ordinary readers pointed at the right paths."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError
from ..readers import CocoDetectionReader, KarpathyCaptions, MdetrReader, Nlvr2Reader, VqaReader, WebDatasetReader
from .vocab import shape_names_pattern


class ShapesDataset:
    """``ShapesDataset(dir).vqa("train")`` etc.; ``meta`` is ``dir/dataset.json``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_file = self.root / "dataset.json"
        if not meta_file.is_file():
            raise DataError(meta_file, "not a shapes data set directory (dataset.json missing); "
                                       "write one with `fibervl data shapes --out DIR`")
        with open(meta_file, encoding="utf-8") as f:
            self.meta = json.load(f)
        self.ext = self.meta["config"]["image_format"]
        self.held_out_shapes: list[str] = self.meta["held_out_shapes"]
        self.shapes: list[str] = self.meta["shapes"]
        self._held_out_words = shape_names_pattern(self.held_out_shapes) if self.held_out_shapes else None

    def expression_group(self, sample) -> str:
        """The group of a REC record: "held_out" where ``sample.text`` names a held-out shape (only
        test files do), else "seen"."""
        if self._held_out_words is not None and self._held_out_words.search(sample.text):
            return "held_out"
        return "seen"

    @property
    def held_out_category_ids(self) -> list[int]:
        """Detection category ids of the zero-shot classes (AP on these = zero-shot AP)."""
        return [self.shapes.index(s) + 1 for s in self.held_out_shapes]

    @property
    def seen_category_ids(self) -> list[int]:
        return [i + 1 for i, s in enumerate(self.shapes) if s not in self.held_out_shapes]

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    def captions(self, split: str, **kw) -> KarpathyCaptions:
        return KarpathyCaptions(self.root / "captions" / "dataset_shapes.json", self.root / "images", split,
                                dataset="shapes", **kw)

    def vqa(self, split: str, **kw) -> VqaReader:
        return VqaReader(self.root / "vqa", split, source="shapes", image_root=self.root / "images",
                         image_template=f"{{split}}/shapes_{{split}}_{{image_id:012d}}.{self.ext}", **kw)

    def nlvr2(self, split: str, **kw) -> Nlvr2Reader:
        return Nlvr2Reader(self.root / "nlvr2" / f"{split}.json", self.root / "nlvr2" / "images",
                           image_ext=f".{self.ext}", dataset="shapes", **kw)

    def grounding(self, split: str, **kw) -> MdetrReader:
        return MdetrReader(self.root / "mdetr_annotations" / f"final_shapes_grounding_{split}.json",
                           self.root / "images" / split, **kw)

    def refexp(self, split: str, **kw) -> MdetrReader:
        return MdetrReader(self.root / "mdetr_annotations" / f"final_shapes_refexp_{split}.json",
                           self.root / "images" / split, **kw)

    def detection(self, split: str, **kw) -> CocoDetectionReader:
        return CocoDetectionReader(self.root / "detection" / f"instances_{split}.json", self.root / "images" / split, **kw)

    def webdataset(self, split: str = "train", **kw) -> WebDatasetReader:
        names = self.meta.get("webdataset_shards", {}).get(split)
        if not names:
            raise DataError(self.root / "dataset.json", f"no webdataset shards were written for split {split!r}")
        return WebDatasetReader([self.root / "webdataset" / n for n in names], **kw)

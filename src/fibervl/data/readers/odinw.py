"""ODinW (Object Detection in the Wild, GLIP's 13 / 35 data sets) in Roboflow's COCO export layout,
and the k-shot training sets of the GLIP / FIBER protocol.

A Roboflow export folder (``odinw/Aquarium/raw/valid``) holds ``_annotations.coco.json`` with
the images beside it. Its category 0 is the data set's own name, the supercategory of every
class (``{"id": 0, "name": "creatures", "supercategory": "none"}``, then ``{"id": 1, "name":
"fish", "supercategory": "creatures"}``, ...): it is not a class and is left out of the prompt
and of the evaluation (GLIP's ``annotations_without_background``).
"""

from __future__ import annotations

import glob
import random
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..errors import DataError
from ..samples import Sample
from .coco_detection import CocoDetectionReader

ROBOFLOW_ANNOTATIONS = "_annotations.coco.json"
FEW_SHOTS = (1, 3, 5, 10)
FEW_SHOT_SEEDS = (1, 2, 3)
SPLIT_FOLDERS = ("train", "valid", "test")


def dataset_name(folder: str | Path) -> str:
    """The ODinW data set a Roboflow folder belongs to: the folder just below ``odinw/``
    (``odinw/Aquarium/raw/valid`` -> ``Aquarium``), else the one above the split folder."""
    folder = Path(folder).resolve()
    for parent in folder.parents:
        if parent.parent.name.lower() == "odinw":
            return parent.name
    return folder.parent.name if folder.name in SPLIT_FOLDERS else folder.name


def _is_dataset_category(categories: dict[int, dict]) -> bool:
    """Whether category 0 is a Roboflow export's data-set name rather than a class."""
    if 0 not in categories or len(categories) < 2:
        return False
    name = categories[0].get("name")
    others = [c for cid, c in categories.items() if cid != 0]
    return categories[0].get("supercategory") == "none" or all(c.get("supercategory") == name for c in others)


class OdinwReader(CocoDetectionReader):
    """One Sample per image of a Roboflow export ``folder``; ``categories`` without category 0,
    whose name is :attr:`dataset_label` (a box labelled 0 is a bad record). :attr:`name`: the
    ODinW data set (:func:`dataset_name`).

    ``shots`` > 0: only the images of the k-shot training set drawn with ``seed``
    (:func:`few_shot_image_ids`); :meth:`ground_truth` still holds the whole folder.
    """

    def __init__(self, folder: str | Path, skip_bad: bool = False, shots: int = 0, seed: int = 0,
                 keep_crowd: bool = False):
        folder = Path(folder)
        if folder.is_file():  # the annotation file given instead of its folder
            folder = folder.parent
        file = folder / ROBOFLOW_ANNOTATIONS
        if not file.is_file():
            raise DataError(file, f"not a Roboflow export folder: {ROBOFLOW_ANNOTATIONS} not found in {folder}")
        super().__init__(file, folder, skip_bad=skip_bad, keep_crowd=keep_crowd, keep_empty=True)
        self.name = dataset_name(folder)
        self.dataset_label = None
        if _is_dataset_category(self.category_meta):
            self.dataset_label = self.categories.pop(0)
            self.category_meta.pop(0)
            self._drop_category_zero()
        if shots:
            keep = set(few_shot_image_ids(self.samples, shots, seed))
            self.samples = [s for s in self.samples if s.image_id in keep]

    def _drop_category_zero(self) -> None:
        for ann in self.annotations:
            if ann["category_id"] == 0:
                self._bad(DataError(self.file, f"box labelled with category 0 ({self.dataset_label!r}), the data "
                                               "set's name in a Roboflow export, not a class", f"annotation id {ann.get('id')}"))
        self.annotations = [a for a in self.annotations if a["category_id"] != 0]
        samples = []
        for s in self.samples:
            keep = s.category_ids != 0
            samples.append(s if bool(keep.all()) else replace(s, boxes=s.boxes[keep], category_ids=s.category_ids[keep]))
        self.samples = samples


def few_shot_image_ids(samples: Sequence[Sample], shots: int, seed: int = 0) -> list:
    """The images of a ``shots``-shot training set (GLIP / FIBER ``FEW_SHOT``): the annotated
    images in id order, shuffled by ``random.Random(seed)`` unless ``seed`` is 0; an image is
    taken when one of its categories still has fewer than ``shots`` images taken, and then counts
    for every category it holds. A category with fewer images keeps them all."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    annotated = sorted((s for s in samples if s.num_boxes), key=lambda s: (str(type(s.image_id)), s.image_id))
    if seed:
        random.Random(seed).shuffle(annotated)
    left: dict[int, int] = {}
    chosen = []
    for s in annotated:
        cats = {int(c) for c in s.category_ids.tolist()}
        for c in cats:
            left.setdefault(c, shots)
        if any(left[c] > 0 for c in cats):
            chosen.append(s.image_id)
            for c in cats:
                left[c] -= 1
    return chosen


# ---- several data sets -------------------------------------------------------------------------

_BRACES = re.compile(r"\{([^{}]*,[^{}]*)\}")


def is_folder_list(pattern: str | Path) -> bool:
    """Whether ``pattern`` names several Roboflow folders: a glob (``odinw/*/valid``) or a
    brace list (``odinw/{Aquarium,Pothole}/valid``)."""
    text = str(pattern)
    return bool(_BRACES.search(text)) or any(ch in text for ch in "*?[")


def expand_folders(pattern: str | Path) -> list[Path]:
    """The folders ``pattern`` names, in the order given (a glob's matches sorted): braces
    ``{a,b}`` first, then globs; a pattern that matches nothing is a DataError."""
    text = str(pattern)
    m = _BRACES.search(text)
    if m:
        return [p for alt in m.group(1).split(",")
                for p in expand_folders(text[:m.start()] + alt.strip() + text[m.end():])]
    if any(ch in text for ch in "*?["):
        found = sorted(Path(p) for p in glob.glob(text) if Path(p).is_dir())
        if not found:
            raise DataError(text, "no folder matches this pattern")
        return found
    return [Path(text)]


class OdinwSuite:
    """Several ODinW data sets evaluated together (GLIP's ODinW-13 / -35 average): ``datasets``,
    name -> :class:`OdinwReader` of each folder that ``pattern`` names (:func:`expand_folders`).
    Each is scored over its own classes, and the summary is their mean
    (:func:`fibervl.tasks.grounding.evaluate_odinw`). It is an evaluation set: training takes one
    data set at a time, as the paper fine-tunes each one on its own."""

    def __init__(self, pattern: str | Path, skip_bad: bool = False):
        self.pattern = str(pattern)
        self.datasets: dict[str, OdinwReader] = {}
        for folder in expand_folders(pattern):
            reader = OdinwReader(folder, skip_bad=skip_bad)
            name = reader.name
            if name in self.datasets:  # two variants of one data set: name them by their folders
                name = f"{name}/{folder.parent.name}/{folder.name}"
            self.datasets[name] = reader

    def __len__(self) -> int:
        return sum(len(r) for r in self.datasets.values())

    def __iter__(self):
        for reader in self.datasets.values():
            yield from reader

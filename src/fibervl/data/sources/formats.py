"""The registry of data formats: which kinds of data each holds and how each kind is read.

A kind is what a task consumes: ``captions`` (image-text pairs: pre-training, retrieval,
captioning), ``vqa``, ``nlvr2``, ``grounding`` (phrases and their boxes), ``refexp`` (one
expression, one box) and ``detection`` (boxes of named classes). :func:`open_source` returns
the ordinary reader of :mod:`fibervl.data.readers` for a (source, kind, split), after checking
that the format holds that kind and that its files are there, so that a wrong or mistyped
source is one error naming it.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...errors import ConfigError
from ..errors import DataError
from .spec import DataSource

KINDS = ("captions", "vqa", "nlvr2", "grounding", "refexp", "detection")

# VQAv2's data subtypes, for a recipe that asks a VQAv2 directory for its "train" or "val" split
VQAV2_SUBTYPES = {"train": "train2014", "val": "val2014", "test": "test2015"}
ROBOFLOW_ANNOTATIONS = "_annotations.coco.json"


@dataclass(frozen=True)
class Format:
    """``kinds``: what the format holds; ``open(source, kind, split, skip_bad)``: its reader;
    ``annotations``: what ANNOTATIONS names (``file``, ``folder`` or ``shards``); ``stream``:
    read by iterating, never indexed (webdataset); ``about``: one line for help texts;
    ``reader_module``: a reader module the format needs (None: always there)."""

    name: str
    kinds: tuple[str, ...]
    open: Callable
    annotations: str = "file"
    stream: bool = False
    about: str = ""
    reader_module: str | None = None

    @property
    def available(self) -> bool:
        return self.reader_module is None or importlib.util.find_spec(self.reader_module) is not None


def _images(source: DataSource, split: str, default: Path) -> Path:
    return Path(source.path("images", split)) if source.images else default


def _open_shapes(source, kind, split, skip_bad):
    from ..shapes import ShapesDataset

    return getattr(ShapesDataset(source.annotations), kind)(split, skip_bad=skip_bad)


def _open_karpathy(source, kind, split, skip_bad):
    from ..readers import KarpathyCaptions

    file = Path(source.path("annotations", split))
    return KarpathyCaptions(file, _images(source, split, file.parent), split, skip_bad=skip_bad,
                            dataset=_karpathy_name(file))


def _karpathy_name(file: Path) -> str:
    # dataset_coco.json / dataset_flickr30k.json: the name is in the file name
    m = re.match(r"dataset_(\w+)\.json$", file.name)
    return m.group(1) if m else "coco"


def _open_coco_captions(source, kind, split, skip_bad):
    from ..readers import CocoCaptionsReader

    file = Path(source.path("annotations", split))
    return CocoCaptionsReader(file, _images(source, split, file.parent), skip_bad=skip_bad)


def _vqa_files(folder: Path, split: str) -> tuple[str, str]:
    """(split, source name) of the VQAv2 questions file of ``split`` in ``folder``: the
    ``mscoco`` one, else the only one; a split named ``train``/``val``/``test`` falls back to
    VQAv2's subtype (``train2014``) when the folder has no file of that name."""
    for name in (split, VQAV2_SUBTYPES.get(split)):
        if not name:
            continue
        if (folder / f"v2_OpenEnded_mscoco_{name}_questions.json").is_file():
            return name, "mscoco"
        found = sorted(folder.glob(f"v2_OpenEnded_*_{glob.escape(name)}_questions.json"))
        if len(found) == 1:
            return name, found[0].name[len("v2_OpenEnded_"):-len(f"_{name}_questions.json")]
        if len(found) > 1:
            raise DataError(folder, f"several VQAv2 questions files of split {name!r}: "
                                    f"{', '.join(f.name for f in found)}")
    raise DataError(folder / f"v2_OpenEnded_mscoco_{split}_questions.json",
                    f"no VQAv2 questions file of split {split!r} in {folder} "
                    f"(splits there: {', '.join(vqa_splits(folder)) or 'none'})")


def vqa_splits(folder: Path) -> list[str]:
    names = {m.group(1) for f in folder.glob("v2_OpenEnded_*_questions.json")
             if (m := re.match(r"v2_OpenEnded_[^_]+_(.+)_questions\.json$", f.name))}
    return sorted(names)


def _open_vqav2(source, kind, split, skip_bad):
    from ..readers import VQAV2_IMAGE_TEMPLATE, VqaReader

    folder = Path(source.path("annotations", split))
    split, name = _vqa_files(folder, split)
    # test splits come without answers; any other split must have its annotations
    annotations = (folder / f"v2_{name}_{split}_annotations.json").is_file() or not split.startswith("test")
    return VqaReader(folder, split, source=name, image_root=_images(source, split, folder),
                     image_template=source.image_template or VQAV2_IMAGE_TEMPLATE, annotations=annotations,
                     skip_bad=skip_bad)


def _open_nlvr2(source, kind, split, skip_bad):
    from ..readers import Nlvr2Reader

    file = Path(source.path("annotations", split))
    return Nlvr2Reader(file, _images(source, split, file.parent), image_ext=source.image_ext or ".png",
                       skip_bad=skip_bad)


def _open_mdetr(source, kind, split, skip_bad):
    from ..readers import MdetrReader

    file = Path(source.path("annotations", split))
    return MdetrReader(file, _images(source, split, file.parent), skip_bad=skip_bad)


def _open_coco(source, kind, split, skip_bad):
    from ..readers import CocoDetectionReader

    file = Path(source.path("annotations", split))
    return CocoDetectionReader(file, _images(source, split, file.parent), skip_bad=skip_bad)


def _open_lvis(source, kind, split, skip_bad):
    from ..readers.lvis import LvisReader

    file = Path(source.path("annotations", split))
    return LvisReader(file, _images(source, split, file.parent), skip_bad=skip_bad)


def _open_odinw(source, kind, split, skip_bad):
    from ..readers.odinw import OdinwReader, OdinwSuite, is_folder_list

    folder = source.path("annotations", split)
    if is_folder_list(folder):  # several data sets (odinw/*/valid): scored each, and averaged
        if source.shots:
            raise ConfigError(f"data source {source}: a k-shot training set is drawn from one data set; "
                              "name one folder")
        return OdinwSuite(folder, skip_bad=skip_bad)
    return OdinwReader(Path(folder), skip_bad=skip_bad, shots=source.shots, seed=source.seed)


def _open_webdataset(source, kind, split, skip_bad):
    from ..readers import WebDatasetReader

    return WebDatasetReader(source.path("annotations", split), skip_bad=skip_bad)


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("shapes", KINDS, _open_shapes, "folder",
           about="the embedded shapes set (fibervl data shapes --out DIR); the task picks the file"),
    Format("karpathy", ("captions",), _open_karpathy,
           about="Karpathy's split file (dataset_coco.json, dataset_flickr30k.json); IMAGES: the COCO or Flickr30k image root"),
    Format("coco_captions", ("captions",), _open_coco_captions,
           about="COCO captions_{split}.json; IMAGES: the split's image folder (coco/{split})"),
    Format("webdataset", ("captions",), _open_webdataset, "shards", stream=True,
           about="tar shards of images with a .txt caption, or img2dataset's .json caption "
                 "('cc3m/{00000..00331}.tar'), streamed"),
    Format("vqav2", ("vqa",), _open_vqav2, "folder",
           about="the folder of v2_OpenEnded_mscoco_{split}_questions.json and v2_mscoco_{split}_annotations.json; "
                 "IMAGES: the COCO root (options split=train2014, image_template=...)"),
    Format("nlvr2", ("nlvr2",), _open_nlvr2,
           about="NLVR2's JSON lines (nlvr2/data/dev.json); IMAGES: the folder of train/, dev/, test1/"),
    Format("mdetr", ("grounding", "refexp"), _open_mdetr,
           about="MDETR's annotations (final_flickr_separateGT_train.json, final_refcoco_testA.json, GoldG "
                 "final_mixed_train_no_coco.json); IMAGES: the images folder"),
    Format("coco", ("detection",), _open_coco,
           about="a COCO detection file (instances_val2017.json or your own); IMAGES: the images folder"),
    Format("o365", ("detection",), _open_coco,
           about="Objects365 in COCO format (zhiyuan_objv2_train.json); IMAGES: the folder file_name is relative to"),
    Format("lvis", ("detection",), _open_lvis, reader_module="fibervl.data.readers.lvis",
           about="LVIS v1 (lvis_v1_val.json); IMAGES: the COCO root, each image found through its coco_url"),
    Format("odinw", ("detection",), _open_odinw, "folder", reader_module="fibervl.data.readers.odinw",
           about=f"a Roboflow export folder (odinw/Aquarium/raw/valid: {ROBOFLOW_ANNOTATIONS} with the images; "
                 "options shots=K, seed=S: the k-shot training set; a glob or {A,B} list of such folders, "
                 "odinw/*/valid, evaluates each data set and their mean AP)"),
)}


def format_of(source: DataSource) -> Format:
    fmt = FORMATS.get(source.format)
    if fmt is None:
        raise ConfigError(f"data source {source}: unknown format {source.format!r}; known: {', '.join(FORMATS)}")
    return fmt


def check_kind(source: DataSource, kind: str, what: str = "") -> Format:
    """The source's format, checked to hold ``kind`` and to be available in this version."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of data {kind!r}; known: {', '.join(KINDS)}")
    fmt = format_of(source)
    if kind not in fmt.kinds:
        fits = [f.name for f in FORMATS.values() if kind in f.kinds]
        raise ConfigError(f"data source {source}: format {fmt.name!r} holds {'/'.join(fmt.kinds)} data, but "
                          f"{what or 'this task'} needs {kind} data (formats: {', '.join(fits)})")
    if not fmt.available:
        raise ConfigError(f"data source {source}: the {fmt.name} format is not available yet in this version of "
                          f"fibervl ({fmt.reader_module} is missing)")
    return fmt


def _folder_list(pattern: str) -> bool:
    from ..readers.odinw import is_folder_list

    return is_folder_list(pattern)


def check_paths(source: DataSource, split: str) -> None:
    """DataError naming the source when its annotations (or its images folder) are not there."""
    fmt = format_of(source)
    ann = source.path("annotations", split)
    if not ann:
        raise ConfigError(f"data source {source}: no annotations given")
    if fmt.annotations == "shards":
        from ..readers import expand_shards

        shards = expand_shards(ann)
        missing = [s for s in shards if not s.is_file()]
        if missing:
            raise DataError(missing[0], f"shard not found ({len(missing)} of {len(shards)} missing; source {source})")
    elif fmt.name == "odinw" and _folder_list(ann):
        from ..readers.odinw import expand_folders

        for folder in expand_folders(ann):
            if not folder.is_dir():
                raise DataError(folder, f"folder not found (source {source})")
    elif fmt.annotations == "folder":
        if not Path(ann).is_dir():
            raise DataError(ann, f"folder not found (source {source})")
    elif not Path(ann).is_file():
        raise DataError(ann, f"annotation file not found (source {source})"
                             + (" (a folder: name the file in it)" if Path(ann).is_dir() else ""))
    if source.images and not Path(source.path("images", split)).is_dir():
        raise DataError(source.path("images", split), f"image folder not found (source {source})")


def open_source(source: DataSource, kind: str, split: str, skip_bad: bool = False, what: str = ""):
    """The reader of ``kind`` data of ``source``, split ``source.split or split``. ``what``
    names the consumer in errors (``"finetune vqa"``)."""
    fmt = check_kind(source, kind, what)
    split = source.split or split
    check_paths(source, split)
    return fmt.open(source, kind, split, skip_bad)


def source_splits(source: DataSource) -> list[str]:
    """The splits a source holds, as far as its files tell: a shapes set's, a Karpathy file's,
    a VQAv2 folder's; for a path with ``{split}`` the names that fill it; else ``[""]`` (the
    file is one split)."""
    if source.split:
        return [source.split]
    fmt = format_of(source)
    ann = source.annotations
    if fmt.name == "shapes":
        meta = Path(ann) / "dataset.json"
        if meta.is_file():
            return list(json.loads(meta.read_text(encoding="utf-8")).get("splits", {})) or ["train", "val", "test"]
        return ["train", "val", "test"]
    if "{split}" in ann:
        pattern = glob.escape(ann).replace(glob.escape("{split}"), "*")
        regex = re.compile(re.escape(ann).replace(re.escape("{split}"), "(.+)") + "$")
        names = sorted({m.group(1) for p in glob.glob(pattern) if (m := regex.match(p))})
        return names or [""]
    if fmt.name == "vqav2":
        return vqa_splits(Path(ann)) or [""]
    if fmt.name == "karpathy" and Path(ann).is_file():
        from ..readers import load_json

        images = load_json(ann).get("images", [])
        names = list(dict.fromkeys(i["split"] for i in images if isinstance(i, dict) and isinstance(i.get("split"), str)))
        # COCO's restval images train with the train split (KarpathyCaptions reads them there)
        return [n for n in names if n != "restval"] if "train" in names else names
    return [""]

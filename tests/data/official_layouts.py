"""Tiny data sets in the public data sets' own layouts, cut from a generated shapes set.

Each writer copies a few images and their records from the shapes set into the file names,
folders and fields of the real data set (COCO 2017 and 2014, LVIS v1's coco_url images,
Objects365, a Roboflow export, MDETR's Flickr30k and RefCOCO files, Karpathy's split file,
COCO captions, VQAv2, NLVR2 with PNG images in train/<directory>/ and dev/, webdataset
shards); :func:`write_all` returns the SPEC of each, relative to nothing (absolute paths).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

from PIL import Image

from fibervl.data.shapes import ShapesDataset

SPLITS = {"train": ("train2017", "train2014", "train"), "val": ("val2017", "val2014", "dev")}


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)


def _detection_subset(ds: ShapesDataset, split: str, n: int) -> dict:
    data = json.loads((ds.root / "detection" / f"instances_{split}.json").read_text())
    images = data["images"][:n]
    keep = {i["id"] for i in images}
    data["images"] = images
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    return data


def write_coco(ds: ShapesDataset, out: Path, n: int) -> None:
    """coco/annotations/instances_{train,val}2017.json and coco/{train,val}2017/000000000061.jpg."""
    for split, (year17, _, _) in SPLITS.items():
        data = _detection_subset(ds, split, n)
        for img in data["images"]:
            name = f"{img['id']:012d}.jpg"
            _copy(ds.root / "images" / split / img["file_name"], out / "coco" / year17 / name)
            img["file_name"] = name
        _dump(out / "coco" / "annotations" / f"instances_{year17}.json", data)


def write_coco_captions_and_karpathy(ds: ShapesDataset, out: Path, n: int) -> None:
    """coco/annotations/captions_{train,val}2017.json (images from write_coco) and Karpathy's
    coco/dataset_coco.json over coco/{train,val}2014/COCO_{split}2014_000000000061.jpg."""
    karpathy = []
    for split, (year17, year14, _) in SPLITS.items():
        reader = ds.captions(split)
        images, anns = [], []
        for img in reader.images[:n]:
            iid = img["image_id"]
            images.append({"id": iid, "file_name": f"{iid:012d}.jpg", "width": 128, "height": 128})
            anns += [{"id": iid * 100 + k, "image_id": iid, "caption": c} for k, c in enumerate(img["captions"])]
            _copy(img["image_path"], out / "coco" / year17 / f"{iid:012d}.jpg")
            name = f"COCO_{year14}_{iid:012d}.jpg"
            _copy(img["image_path"], out / "coco" / year14 / name)
            karpathy.append({"filepath": year14, "filename": name, "cocoid": iid, "split": split,
                             "sentences": [{"raw": c, "tokens": c.split()} for c in img["captions"]]})
        _dump(out / "coco" / "annotations" / f"captions_{year17}.json", {"images": images, "annotations": anns})
    karpathy[1]["split"] = "restval"  # read with the training split, as Karpathy's restval is
    _dump(out / "coco" / "dataset_coco.json", {"images": karpathy, "dataset": "coco"})


def write_vqav2(ds: ShapesDataset, out: Path, n: int) -> None:
    """vqav2/v2_OpenEnded_mscoco_{train,val}2014_questions.json + v2_mscoco_..._annotations.json,
    images at VQAv2's template under coco/ (written by write_coco_captions_and_karpathy)."""
    for split, (_, year14, _) in SPLITS.items():
        reader = ds.vqa(split)
        keep = {img["image_id"] for img in ds.captions(split).images[:n]}
        qs = json.loads(reader.questions_file.read_text())
        anns = json.loads(reader.annotations_file.read_text())
        qs["questions"] = [q for q in qs["questions"] if q["image_id"] in keep]
        anns["annotations"] = [a for a in anns["annotations"] if a["image_id"] in keep]
        for d in (qs, anns):
            d.update(data_type="mscoco", data_subtype=year14)
        _dump(out / "vqav2" / f"v2_OpenEnded_mscoco_{year14}_questions.json", qs)
        _dump(out / "vqav2" / f"v2_mscoco_{year14}_annotations.json", anns)


def write_lvis(ds: ShapesDataset, out: Path, n: int) -> None:
    """lvis/lvis_v1_val.json: images named only by coco_url (val2017 and one train2017 image, as
    LVIS v1 val mixes them), negative and not-exhaustive category lists, frequencies."""
    data = _detection_subset(ds, "val", n)
    train = _detection_subset(ds, "train", 1)
    images = []
    for img, year in [(i, "val2017") for i in data["images"]] + [(i, "train2017") for i in train["images"]]:
        images.append({"id": img["id"], "width": img["width"], "height": img["height"],
                       "coco_url": f"http://images.cocodataset.org/{year}/{img['id']:012d}.jpg",
                       "neg_category_ids": [], "not_exhaustive_category_ids": []})
    anns = data["annotations"] + train["annotations"]
    for k, a in enumerate(anns):
        a["id"] = k + 1
    present = {a["category_id"] for a in anns}
    cats = [{**c, "frequency": "fcr"[c["id"] % 3], "synset": f"{c['name']}.n.01", "image_count": 1,
             "instance_count": 1} for c in data["categories"]]
    for img in images:  # a class absent from an image, verified absent: LVIS's negatives
        img["neg_category_ids"] = sorted({c["id"] for c in cats} - present)[:1]
    _dump(out / "lvis" / "lvis_v1_val.json", {"images": images, "annotations": anns, "categories": cats,
                                              "info": {"description": "tiny LVIS v1"}})


def write_objects365(ds: ShapesDataset, out: Path, n: int) -> None:
    """objects365/zhiyuan_objv2_{train,val}.json with images/v1/patch0/objects365_v1_00000061.jpg."""
    for split, name in (("train", "train"), ("val", "val")):
        data = _detection_subset(ds, split, n)
        for img in data["images"]:
            rel = f"images/v1/patch0/objects365_v1_{img['id']:08d}.jpg"
            _copy(ds.root / "images" / split / img["file_name"], out / "objects365" / rel)
            img["file_name"] = rel
        _dump(out / "objects365" / f"zhiyuan_objv2_{name}.json", data)


def write_odinw(ds: ShapesDataset, out: Path, n: int) -> None:
    """odinw/Aquarium/raw/{train,valid}: Roboflow exports (_annotations.coco.json beside the
    images; category 0 is the data set's name, the supercategory of every class)."""
    for split, folder in (("train", "train"), ("val", "valid")):
        data = _detection_subset(ds, split, n)
        root = out / "odinw" / "Aquarium" / "raw" / folder
        for img in data["images"]:
            name = f"IMG_{img['id']:04d}_jpeg.rf.{img['id']:032x}.jpg"
            _copy(ds.root / "images" / split / img["file_name"], root / name)
            img["file_name"] = name
        data["categories"] = [{"id": 0, "name": "creatures", "supercategory": "none"}] + [
            {"id": c["id"], "name": c["name"], "supercategory": "creatures"} for c in data["categories"]]
        _dump(root / "_annotations.coco.json", data)


def _mdetr_subset(ds: ShapesDataset, kind: str, split: str, n: int) -> dict:
    data = json.loads((ds.root / "mdetr_annotations" / f"final_shapes_{kind}_{split}.json").read_text())
    data["images"] = data["images"][:n]
    keep = {i["id"] for i in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    return data


def write_mdetr(ds: ShapesDataset, out: Path, n: int) -> None:
    """mdetr_annotations/final_flickr_separateGT_{train,val}.json over flickr30k/images/<id>.jpg and
    final_refcoco_{train,val}.json over coco/train2014/COCO_train2014_<id>.jpg (RefCOCO's images
    are all COCO train2014)."""
    for split, (_, _, _) in SPLITS.items():
        data = _mdetr_subset(ds, "grounding", split, n)
        for img in data["images"]:
            name = f"{1000000000 + img['original_img_id']}.jpg"
            _copy(ds.root / "images" / split / img["file_name"], out / "flickr30k" / "images" / name)
            img["file_name"] = name
        _dump(out / "mdetr_annotations" / f"final_flickr_separateGT_{split}.json", data)
        data = _mdetr_subset(ds, "refexp", split, n)
        for img in data["images"]:
            name = f"COCO_train2014_{img['original_img_id']:012d}.jpg"
            _copy(ds.root / "images" / split / img["file_name"], out / "coco" / "train2014" / name)
            img["file_name"] = name
            img["dataset_name"] = "refcoco"
        _dump(out / "mdetr_annotations" / f"final_refcoco_{split}.json", data)


def write_nlvr2(ds: ShapesDataset, out: Path, n: int) -> None:
    """nlvr2/data/{train,dev}.json (JSON lines) with PNG images in nlvr2/images/train/<directory>/
    and nlvr2/images/dev/, identifiers train-... and dev-..."""
    for split, (_, _, nlvr_split) in SPLITS.items():
        lines = []
        for sample in list(ds.nlvr2(split))[:n]:
            ident = nlvr_split + sample.sample_id[len(split):]
            stem = "-".join(ident.split("-")[:3])
            record = {"identifier": ident, "sentence": sample.text, "label": str(sample.label)}
            folder = out / "nlvr2" / "images" / nlvr_split
            if nlvr_split == "train":
                record["directory"] = 7
                folder = folder / "7"
            folder.mkdir(parents=True, exist_ok=True)
            for side, path in (("img0", sample.image_path), ("img1", sample.image2_path)):
                Image.open(path).save(folder / f"{stem}-{side}.png")
            lines.append(json.dumps(record))
        path = out / "nlvr2" / "data" / f"{nlvr_split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_webdataset(ds: ShapesDataset, out: Path) -> None:
    """shards/000000.tar (the shapes set's training shard: KEY.jpg, KEY.txt, KEY.json) and
    000001.tar, the same samples as some img2dataset exports hold them: KEY.jpeg and the caption
    only in KEY.json's ``caption``."""
    shard = ds.root / "webdataset" / ds.meta["webdataset_shards"]["train"][0]
    _copy(shard, out / "shards" / "000000.tar")
    with tarfile.open(shard) as src, tarfile.open(out / "shards" / "000001.tar", "w") as dst:
        members = {m.name: src.extractfile(m).read() for m in src if m.isfile()}
        for name, data in members.items():
            key, _, ext = name.partition(".")
            if ext == "txt":
                continue
            if ext == "json":
                meta = json.loads(data)
                data = json.dumps({**meta, "key": key, "status": "success",
                                   "caption": members[f"{key}.txt"].decode("utf-8")}).encode("utf-8")
            info = tarfile.TarInfo(f"{key}.jpeg" if ext == "jpg" else name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))


def write_all(shapes_root: Path, out: Path, n: int = 8) -> dict[str, str]:
    """Every layout under ``out``; returns {name: SPEC}."""
    ds = ShapesDataset(shapes_root)
    write_coco(ds, out, n)
    write_coco_captions_and_karpathy(ds, out, n)
    write_vqav2(ds, out, n)
    write_lvis(ds, out, n)
    write_objects365(ds, out, n)
    write_odinw(ds, out, n)
    write_mdetr(ds, out, n)
    write_nlvr2(ds, out, n)
    write_webdataset(ds, out)
    o = out
    return {
        "coco": f"coco:{o}/coco/annotations/instances_val2017.json:{o}/coco/val2017",
        "coco_train": f"coco:{o}/coco/annotations/instances_train2017.json:{o}/coco/train2017",
        "coco_captions": f"coco_captions:{o}/coco/annotations/captions_{{split}}.json:{o}/coco/{{split}}",
        "karpathy": f"karpathy:{o}/coco/dataset_coco.json:{o}/coco",
        "vqav2_train": f"vqav2,split=train2014:{o}/vqav2:{o}/coco",
        "vqav2_val": f"vqav2,split=val2014:{o}/vqav2:{o}/coco",
        "lvis": f"lvis:{o}/lvis/lvis_v1_val.json:{o}/coco",
        "o365": f"o365:{o}/objects365/zhiyuan_objv2_train.json:{o}/objects365",
        "odinw": f"odinw:{o}/odinw/Aquarium/raw/valid",
        "odinw_train": f"odinw:{o}/odinw/Aquarium/raw/train",
        "flickr_train": f"mdetr:{o}/mdetr_annotations/final_flickr_separateGT_train.json:{o}/flickr30k/images",
        "flickr_val": f"mdetr:{o}/mdetr_annotations/final_flickr_separateGT_val.json:{o}/flickr30k/images",
        "refcoco_train": f"mdetr:{o}/mdetr_annotations/final_refcoco_train.json:{o}/coco/train2014",
        "refcoco_val": f"mdetr:{o}/mdetr_annotations/final_refcoco_val.json:{o}/coco/train2014",
        "nlvr2_train": f"nlvr2:{o}/nlvr2/data/train.json:{o}/nlvr2/images",
        "nlvr2_dev": f"nlvr2:{o}/nlvr2/data/dev.json:{o}/nlvr2/images",
        "webdataset": f"webdataset:{o}/shards/{{000000..000001}}.tar",
    }

"""LVIS v1 and ODinW (Roboflow export) readers on tiny sets written in the official layouts, and
the GLIP / FIBER k-shot training sets."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from fibervl.data import DataError
from fibervl.data.readers.lvis import LvisReader
from fibervl.data.readers.odinw import OdinwReader, dataset_name, few_shot_image_ids
from fibervl.data.samples import Sample


def _image(path, size=(64, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 60, 30)).save(path)


def write_lvis(root, neg_of_second="ok"):
    """COCO root with train2017/ and val2017/, and lvis_v1_val.json whose images point there
    through their coco_url (LVIS v1 val takes images from both)."""
    coco = root / "coco"
    _image(coco / "train2017" / "000000000139.jpg")
    _image(coco / "val2017" / "000000000285.jpg", (48, 64))
    images = [
        {"id": 139, "coco_url": "http://images.cocodataset.org/train2017/000000000139.jpg", "width": 64, "height": 48,
         "neg_category_ids": [3], "not_exhaustive_category_ids": [], "license": 1,
         "flickr_url": "http://farm1.staticflickr.com/x.jpg", "date_captured": "2013-11-14 11:18:45"},
        {"id": 285, "coco_url": "http://images.cocodataset.org/val2017/000000000285.jpg", "width": 48, "height": 64,
         "neg_category_ids": [1] if neg_of_second == "ok" else neg_of_second, "not_exhaustive_category_ids": [2]},
    ]
    categories = [
        {"id": 1, "name": "aerosol_can", "synonyms": ["aerosol_can", "spray_can"], "def": "a dispenser",
         "synset": "aerosol.n.02", "frequency": "c", "image_count": 64, "instance_count": 109},
        {"id": 2, "name": "bear_(animal)", "synonyms": ["bear"], "def": "large mammal", "synset": "bear.n.01",
         "frequency": "f", "image_count": 300, "instance_count": 500},
        {"id": 3, "name": "yoyo", "synonyms": ["yoyo"], "def": "a toy", "synset": "yo-yo.n.01", "frequency": "r",
         "image_count": 2, "instance_count": 2},
    ]
    annotations = [
        {"id": 1, "image_id": 139, "category_id": 1, "bbox": [4.0, 6.0, 20.0, 10.0], "area": 150.0,
         "segmentation": [[4, 6, 24, 6, 24, 16, 4, 16]]},
        {"id": 2, "image_id": 285, "category_id": 2, "bbox": [10.0, 10.0, 30.0, 40.0], "area": 1000.0,
         "segmentation": [[10, 10, 40, 10, 40, 50, 10, 50]]},
    ]
    file = root / "lvis" / "lvis_v1_val.json"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations,
                                "categories": categories}))
    return file, coco


def write_roboflow(folder, boxes_of_zero=0):
    """A Roboflow COCO export: _annotations.coco.json with the images beside it; category 0 is
    the data set's name."""
    folder.mkdir(parents=True, exist_ok=True)
    names = ["IMG_2301_jpeg_jpg.rf.1.jpg", "IMG_2302_jpeg_jpg.rf.2.jpg"]
    for n in names:
        _image(folder / n, (80, 60))
    cats = [{"id": 0, "name": "creatures", "supercategory": "none"},
            {"id": 1, "name": "fish", "supercategory": "creatures"},
            {"id": 2, "name": "jellyfish", "supercategory": "creatures"}]
    images = [{"id": i, "license": 1, "file_name": n, "height": 60, "width": 80, "date_captured": "2020-11-05T19:48:50+00:00"}
              for i, n in enumerate(names)]
    anns = [{"id": 0, "image_id": 0, "category_id": 1, "bbox": [10, 10, 20, 15], "area": 300, "segmentation": [], "iscrowd": 0},
            {"id": 1, "image_id": 1, "category_id": 2, "bbox": [30, 20, 25, 25], "area": 625, "segmentation": [], "iscrowd": 0}]
    for k in range(boxes_of_zero):
        anns.append({"id": 2 + k, "image_id": 0, "category_id": 0, "bbox": [1, 1, 5, 5], "area": 25, "segmentation": [],
                     "iscrowd": 0})
    (folder / "_annotations.coco.json").write_text(json.dumps(
        {"info": {"year": "2020", "description": "Exported from roboflow.ai"}, "licenses": [], "categories": cats,
         "images": images, "annotations": anns}))
    return folder


def test_lvis_images_are_found_through_coco_url_under_the_coco_root(tmp_path):
    file, coco = write_lvis(tmp_path)
    reader = LvisReader(file, coco)
    assert reader.federated
    paths = {s.image_id: s.image_path for s in reader}
    assert paths == {139: coco / "train2017" / "000000000139.jpg", 285: coco / "val2017" / "000000000285.jpg"}
    assert all(p.is_file() for p in paths.values())
    first = reader[0]
    assert first.meta == {"neg_category_ids": [3], "not_exhaustive_category_ids": []}
    assert first.boxes.tolist() == [[4.0, 6.0, 24.0, 16.0]] and first.category_ids.tolist() == [1]
    assert reader.categories[2] == "bear_(animal)"
    gt = reader.ground_truth()
    assert [i["neg_category_ids"] for i in gt["images"]] == [[3], [1]]
    assert {c["frequency"] for c in gt["categories"]} == {"r", "c", "f"}
    # a root that is itself the images folder: the file name alone
    flat = tmp_path / "flat"
    _image(flat / "000000000139.jpg")
    assert LvisReader(file, flat)[0].image_path == flat / "000000000139.jpg"
    # a COCO root holding val2017/ but not train2017/ is a COCO root missing a folder, not an
    # images folder: the image is looked for (and reported missing) where it belongs
    partial = tmp_path / "partial"
    _image(partial / "val2017" / "000000000285.jpg", (48, 64))
    paths = {s.image_id: s.image_path for s in LvisReader(file, partial)}
    assert paths == {139: partial / "train2017" / "000000000139.jpg", 285: partial / "val2017" / "000000000285.jpg"}


def test_lvis_label_lists_are_checked(tmp_path):
    file, coco = write_lvis(tmp_path, neg_of_second=[99])
    with pytest.raises(DataError, match=r"neg_category_ids.*unknown category ids \[99\]"):
        LvisReader(file, coco)
    skipping = LvisReader(file, coco, skip_bad=True)
    assert [s.image_id for s in skipping] == [139] and skipping.skipped.total == 2  # the image, then its box
    file, coco = write_lvis(tmp_path / "b", neg_of_second=None)
    with pytest.raises(DataError, match="should be a list of category ids"):
        LvisReader(file, coco)
    data = json.loads(file.read_text())
    for c in data["categories"]:
        del c["frequency"]
    file.write_text(json.dumps(data))
    with pytest.raises(DataError, match="not an LVIS file"):
        LvisReader(file, coco, skip_bad=True)


def test_roboflow_category_zero_is_the_dataset_name_not_a_class(tmp_path):
    folder = write_roboflow(tmp_path / "odinw" / "Aquarium" / "raw" / "valid")
    reader = OdinwReader(folder)
    assert reader.categories == {1: "fish", 2: "jellyfish"} and reader.dataset_label == "creatures"
    assert reader.name == "Aquarium" and dataset_name(folder) == "Aquarium"
    assert [s.image_path for s in reader] == [folder / "IMG_2301_jpeg_jpg.rf.1.jpg", folder / "IMG_2302_jpeg_jpg.rf.2.jpg"]
    assert [c["id"] for c in reader.ground_truth()["categories"]] == [1, 2]
    assert OdinwReader(folder / "_annotations.coco.json").categories == reader.categories  # the file works too
    # a box labelled with the data set's name is a bad record, never a class of its own
    bad = write_roboflow(tmp_path / "bad" / "train", boxes_of_zero=2)
    with pytest.raises(DataError, match="category 0 .*creatures.* not a class"):
        OdinwReader(bad)
    skipping = OdinwReader(bad, skip_bad=True)
    assert skipping.skipped.total == 2
    assert skipping[0].category_ids.tolist() == [1] and skipping[0].boxes.shape == (1, 4)
    assert all(a["category_id"] != 0 for a in skipping.ground_truth()["annotations"])
    assert dataset_name(bad) == "bad"
    with pytest.raises(DataError, match="not a Roboflow export folder"):
        OdinwReader(tmp_path)


def test_a_coco_file_counting_from_zero_keeps_category_zero(tmp_path):
    folder = write_roboflow(tmp_path / "plain")
    data = json.loads((folder / "_annotations.coco.json").read_text())
    data["categories"] = [{"id": 0, "name": "cat", "supercategory": "animal"}, {"id": 1, "name": "fish", "supercategory": "animal"},
                          {"id": 2, "name": "jellyfish", "supercategory": "animal"}]
    (folder / "_annotations.coco.json").write_text(json.dumps(data))
    reader = OdinwReader(folder)
    assert sorted(reader.categories) == [0, 1, 2] and reader.dataset_label is None


def _samples(cats_per_image):
    return [Sample(sample_id=str(i), image_id=i, boxes=torch.zeros(len(c), 4), category_ids=torch.tensor(c, dtype=torch.int64))
            for i, c in enumerate(cats_per_image, start=1)]


def test_k_shot_sets_by_hand():
    """Images 1..6 holding classes {1}, {1, 2}, {2}, {1}, {3}, none. In id order (seed 0): an
    image is taken while one of its classes has fewer than k images, and counts for all of them."""
    samples = _samples([[1], [1, 2], [2], [1, 1], [3], []])
    assert few_shot_image_ids(samples, 1) == [1, 2, 5]
    # 2 shots: images 1 and 2 give class 1 its two, class 2 needs image 3; image 4 is not needed
    assert few_shot_image_ids(samples, 2) == [1, 2, 3, 5]
    assert few_shot_image_ids(samples, 10) == [1, 2, 3, 4, 5]  # fewer images than shots: all of them


def test_k_shot_seeds_and_the_reader(tmp_path):
    g = torch.Generator().manual_seed(0)
    cats = [torch.randint(1, 6, (int(torch.randint(1, 4, (), generator=g)),), generator=g).tolist() for _ in range(60)]
    samples = _samples(cats)
    for shots in (1, 3, 5, 10):
        draws = {seed: few_shot_image_ids(samples, shots, seed) for seed in (1, 2, 3)}
        assert draws[1] == few_shot_image_ids(samples, shots, 1)  # seeded: the same set again
        assert len({tuple(sorted(d)) for d in draws.values()}) > 1  # seeds differ
        for ids in draws.values():
            chosen = [s for s in samples if s.image_id in set(ids)]
            for c in range(1, 6):
                have = sum(c in s.category_ids.tolist() for s in chosen)
                assert have >= min(shots, sum(c in s.category_ids.tolist() for s in samples))
    folder = write_roboflow(tmp_path / "odinw" / "Aquarium" / "raw" / "train")
    one_shot = OdinwReader(folder, shots=1, seed=0)
    assert [s.image_id for s in one_shot] == [0, 1] and len(one_shot.ground_truth()["images"]) == 2
    with pytest.raises(ValueError, match="shots must be >= 1"):
        few_shot_image_ids(samples, 0)

"""LVIS federated AP (fibervl.metrics.lvis) on hand-computed cases where it differs from COCO AP,
and against the ``lvis`` package's own evaluator where that imports."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from fibervl.metrics.lvis import lvis_ap


def _ann(i, image, cat, box):
    return {"id": i, "image_id": image, "category_id": cat, "bbox": box, "area": box[2] * box[3]}


def _case():
    """cat (frequent), dog (rare), bird (common) over three images.

    image 1: a cat; dog verified absent. image 2: a cat; cat not exhaustively annotated.
    image 3: a dog and a bird; cat verified absent.
    """
    cats = [{"id": 1, "name": "cat", "frequency": "f"}, {"id": 2, "name": "dog", "frequency": "r"},
            {"id": 3, "name": "bird", "frequency": "c"}]
    images = [
        {"id": 1, "width": 200, "height": 200, "neg_category_ids": [2], "not_exhaustive_category_ids": []},
        {"id": 2, "width": 200, "height": 200, "neg_category_ids": [], "not_exhaustive_category_ids": [1]},
        {"id": 3, "width": 200, "height": 200, "neg_category_ids": [1], "not_exhaustive_category_ids": []},
    ]
    anns = [_ann(1, 1, 1, [10, 10, 50, 50]), _ann(2, 2, 1, [20, 20, 60, 40]), _ann(3, 3, 2, [0, 0, 80, 80]),
            _ann(4, 3, 3, [100, 100, 40, 40])]
    gt = {"images": images, "annotations": anns, "categories": cats}
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9},     # TP
        {"image_id": 2, "category_id": 1, "bbox": [20, 20, 60, 40], "score": 0.8},     # TP
        {"image_id": 2, "category_id": 1, "bbox": [150, 150, 30, 30], "score": 0.95},  # LVIS: ignored (not exhaustive)
        {"image_id": 3, "category_id": 1, "bbox": [150, 10, 30, 30], "score": 0.85},   # FP in both (verified absent)
        {"image_id": 3, "category_id": 2, "bbox": [0, 0, 80, 80], "score": 0.7},       # TP
        {"image_id": 3, "category_id": 3, "bbox": [100, 100, 40, 40], "score": 0.6},   # TP
        {"image_id": 1, "category_id": 3, "bbox": [120, 120, 40, 40], "score": 0.99},  # LVIS: dropped (unverified)
    ]
    return gt, results


def test_federated_rules_by_hand():
    gt, results = _case()
    m = lvis_ap(gt, results)
    # cat, by score: 0.95 ignored, 0.9 TP, 0.85 FP, 0.8 TP of 2 boxes: precision envelope 1 up to
    # recall 0.5 (51 of the 101 recall points), 2/3 above (50 points)
    cat = (51 + 50 * 2 / 3) / 101
    assert m["APf"] == pytest.approx(100 * cat)
    assert m["APr"] == pytest.approx(100.0) and m["APc"] == pytest.approx(100.0)  # dog found; bird's FP dropped
    assert m["AP"] == pytest.approx(100 * (cat + 1 + 1) / 3)
    assert m["AP50"] == pytest.approx(m["AP"]) and m["AP75"] == pytest.approx(m["AP"])  # exact boxes: every IoU
    assert m["AR@300"] == pytest.approx(100.0)
    # COCO counts the stray cat of image 2 and the bird of image 1 as false positives, ranked
    # first: cat and bird reach precision 1/2 only
    pytest.importorskip("pycocotools")
    from fibervl.metrics.detection import coco_ap

    assert coco_ap(gt, results)["AP"] == pytest.approx(100 * (0.5 + 1 + 0.5) / 3)


def test_three_hundred_detections_per_image_over_all_categories():
    """300 confident detections of a class verified absent push the one true box of another class
    out of LVIS's budget (AP 0); COCO's budget is per image and category (AP 100)."""
    gt = {"images": [{"id": 1, "width": 640, "height": 480, "neg_category_ids": [2], "not_exhaustive_category_ids": []}],
          "annotations": [_ann(1, 1, 1, [10, 10, 50, 50])],
          "categories": [{"id": 1, "name": "a", "frequency": "f"}, {"id": 2, "name": "b", "frequency": "f"}]}
    junk = [{"image_id": 1, "category_id": 2, "bbox": [float(i), 300.0, 10.0, 10.0], "score": 0.5 + i / 1000}
            for i in range(300)]
    true = {"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.1}
    assert lvis_ap(gt, junk + [true])["AP"] == 0.0
    assert lvis_ap(gt, junk[:299] + [true])["AP"] == pytest.approx(100.0)
    pytest.importorskip("pycocotools")
    from fibervl.metrics.detection import coco_ap

    assert coco_ap(gt, junk + [true], category_ids=[1])["AP"] == pytest.approx(100.0)


def test_restricting_categories_and_images():
    gt, results = _case()
    assert lvis_ap(gt, results, category_ids=[2])["AP"] == pytest.approx(100.0)
    only_cat = lvis_ap(gt, results, category_ids=[1])
    assert only_cat["APr"] == -1.0 and only_cat["APc"] == -1.0
    # image 1 alone: its cat found, the unverified bird dropped
    assert lvis_ap(gt, results, image_ids=[1])["AP"] == pytest.approx(100.0)
    assert lvis_ap(gt, [], category_ids=[1])["AP"] == 0.0


def _random_case(seed: int):
    rng = np.random.default_rng(seed)
    cats = [{"id": c, "name": f"c{c}", "frequency": "rcf"[c % 3]} for c in range(1, 7)]
    images, anns, results = [], [], []
    for img in range(1, 9):
        present = set(rng.choice(6, size=rng.integers(1, 4), replace=False) + 1)
        others = [c for c in range(1, 7) if c not in present]
        neg = [int(c) for c in others if rng.random() < 0.5]
        nel = [int(c) for c in present if rng.random() < 0.3]
        images.append({"id": img, "width": 300, "height": 300, "neg_category_ids": neg,
                       "not_exhaustive_category_ids": nel})
        for c in present:
            for _ in range(rng.integers(1, 4)):
                x, y = rng.uniform(0, 200, 2)
                w, h = rng.uniform(5, 120, 2)
                anns.append(_ann(len(anns) + 1, img, int(c), [float(x), float(y), float(w), float(h)]))
                for _ in range(rng.integers(0, 3)):  # jittered detections of the box
                    j = rng.normal(0, 0.15, 4) * [w, h, w, h]
                    results.append({"image_id": img, "category_id": int(c), "score": float(rng.random()),
                                    "bbox": [float(x + j[0]), float(y + j[1]), float(max(1, w + j[2])), float(max(1, h + j[3]))]})
        for _ in range(rng.integers(2, 8)):  # detections anywhere, of any class
            x, y = rng.uniform(0, 250, 2)
            results.append({"image_id": img, "category_id": int(rng.integers(1, 7)), "score": float(rng.random()),
                            "bbox": [float(x), float(y), float(rng.uniform(3, 60)), float(rng.uniform(3, 60))]})
    return {"images": images, "annotations": anns, "categories": cats}, results


def _official_lvis(monkeypatch):
    """The ``lvis`` package's LVISEval where it is installed: its vis module's imports (cv2,
    matplotlib) are stubbed and ``np.float``, gone in numpy 2, is put back for its accumulate."""
    import importlib.util

    if importlib.util.find_spec("lvis") is None:
        pytest.skip("the lvis package is not installed")
    for name in ("cv2", "matplotlib", "matplotlib.pyplot"):
        if importlib.util.find_spec(name.split(".")[0]) is None:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setattr(np, "float", float, raising=False)
    from lvis import LVIS, LVISEval

    return LVIS, LVISEval


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_lvis_package(seed, tmp_path, monkeypatch):
    LVIS, LVISEval = _official_lvis(monkeypatch)
    gt, results = _random_case(seed) if seed else _case()
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    ev = LVISEval(LVIS(str(path)), results, iou_type="bbox")
    ev.run()
    ours = lvis_ap(gt, results)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR@300"):
        theirs = float(ev.results[key])
        assert ours[key] == pytest.approx(theirs * 100 if theirs >= 0 else -1.0, abs=1e-9), key

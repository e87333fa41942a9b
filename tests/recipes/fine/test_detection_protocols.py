"""The paper's detection and grounding protocols: input size with the aspect ratio kept and boxes
in the original pixels, Flickr30k any-box vs merged-box recall, RefCOCO split names, the ODinW
average, and ``evaluate detect --results`` scored again by pycocotools / the LVIS evaluator.

Detectors are oracles here (the ground truth, plus a confident false positive per image) where
the numbers must be known; one test runs a real (untrained) model end to end."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import pytest
import torch
from PIL import Image
from torch import nn

import fibervl.predict.grounding  # noqa: F401  imported before the oracles patch what it imports by name
import fibervl.tasks.grounding as grounding
from fibervl.cli import main
from fibervl.config import get_preset
from fibervl.errors import ConfigError
from fibervl.data import CocoDetectionReader, DataError, MdetrReader, Tokenizer
from fibervl.data.readers.odinw import OdinwReader
from fibervl.data.transforms import InputSize
from fibervl.modeling.factory import fit_to_tokenizer
from fibervl.metrics.detection import average_over_datasets
from fibervl.metrics.grounding import grounding_recall, refexp_split
from fibervl.metrics.lvis import lvis_ap
from fibervl.modeling.fiber import FiberModel
from fibervl.testing.configs import micro_detector_config

CATEGORIES = [(1, "cat"), (2, "dog"), (3, "bird")]
# (width, height) and boxes (xywh, category) of each image: wide, tall, square
IMAGES = [((96, 64), [([10, 8, 30, 20], 1), ([50, 30, 40, 30], 2)]),
          ((64, 96), [([5, 40, 50, 50], 3)]),
          ((80, 80), [([20, 20, 30, 30], 1), ([0, 50, 20, 25], 3)])]


def _save_image(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (40, 90, 160)).save(path)


def write_detection_set(fmt: str, root):
    """The three images in the official layout of ``fmt``: (``--eval-data`` SPEC, annotation file)."""
    images, annotations = [], []
    for i, ((w, h), boxes) in enumerate(IMAGES, start=1):
        name = f"{i:012d}.jpg"
        images.append({"id": i, "width": w, "height": h, "file_name": name})
        for box, cat in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": cat, "bbox": box,
                                "area": box[2] * box[3], "iscrowd": 0})
    categories = [{"id": c, "name": n, "supercategory": "animals"} for c, n in CATEGORIES]
    if fmt == "coco":
        folder = root / "val2017"
        for img in images:
            _save_image(folder / img["file_name"], (img["width"], img["height"]))
        file = root / "annotations" / "instances_val2017.json"
        spec = f"coco:{file}:{folder}"
    elif fmt == "odinw":  # Roboflow: category 0 is the data set's name, the images beside the file
        folder = root / "odinw" / "Pets" / "raw" / "valid"
        for img in images:
            _save_image(folder / img["file_name"], (img["width"], img["height"]))
        categories = [{"id": 0, "name": "animals", "supercategory": "none"}] + categories
        file = folder / "_annotations.coco.json"
        spec = f"odinw:{folder}"
    else:  # LVIS: no file_name, images found through coco_url; federated label lists
        for img in images:
            name = img.pop("file_name")
            img["coco_url"] = f"http://images.cocodataset.org/val2017/{name}"
            _save_image(root / "coco" / "val2017" / name, (img["width"], img["height"]))
            present = {a["category_id"] for a in annotations if a["image_id"] == img["id"]}
            # image 2's labels say nothing of cats: the false cat there is dropped (COCO counts it)
            img["neg_category_ids"] = [] if img["id"] == 2 else [c for c, _ in CATEGORIES if c not in present][:1]
            img["not_exhaustive_category_ids"] = [3] if 3 in present else []
        for a, freq in zip(categories, "fcr"):
            a["frequency"] = freq
            del a["supercategory"]
        for a in annotations:
            del a["iscrowd"]
        file = root / "lvis" / "lvis_v1_val.json"
        spec = f"lvis:{file}:{root / 'coco'}"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return spec, file


def oracle_detector(monkeypatch, false_positive: bool = True) -> dict:
    """For the rest of the test, ``detect_with_prompt`` answers each image's ground truth (scores
    0.8 down to 0.5) and, first, a false "cat" box scoring 0.9; boxes in the network input frame,
    as the model's. Returns what the evaluation loader saw (``sizes``: every image's input size)."""
    real_loader, current = grounding._eval_loader, {"sizes": []}

    def loader(*args, **kwargs):
        for batch in real_loader(*args, **kwargs):
            current["batch"] = batch
            current["sizes"].extend(tuple(int(v) for v in s) for s in batch.image_sizes)
            yield batch

    def detect(model, images, image_sizes, chunks, postprocessor=None):
        out = []
        for boxes, cats in zip(current["batch"].boxes, current["batch"].category_ids):
            scores = torch.linspace(0.8, 0.5, len(boxes))
            if false_positive:
                boxes, cats = torch.cat([torch.tensor([[1.0, 1.0, 9.0, 9.0]]), boxes]), torch.cat([torch.tensor([1]), cats])
                scores = torch.cat([torch.tensor([0.9]), scores])
            out.append((boxes, scores, cats))
        return out

    monkeypatch.setattr(grounding, "_eval_loader", loader)
    monkeypatch.setattr(grounding, "detect_with_prompt", detect)
    return current


@pytest.fixture(scope="module")
def tokenizer_dir(shapes_tiny):
    return shapes_tiny / "tokenizer"


# ---- input size ------------------------------------------------------------------------------

def test_the_paper_input_size_and_its_overrides():
    base = get_preset("fiber-base-fine")
    assert grounding.detector_input(base) == InputSize(800, 1333, (480, 560, 640, 720, 800))
    assert grounding.detector_input(get_preset("fiber-tiny-fine")) == InputSize(128, 128, (128,))
    assert grounding.detector_input(base, 600, 1000, (512, 600)) == InputSize(600, 1000, (512, 600))
    size = InputSize(800, 1333)
    assert size.input_size(640, 480) == (800, 1067)  # (h, w): shorter side 800
    assert size.input_size(2000, 500) == (333, 1333)  # the longer side capped at 1333
    assert InputSize.square(128).input_size(128, 128) == (128, 128)  # a square at the model size: as it is
    with pytest.raises(ValueError, match="below the shorter side"):
        grounding.detector_input(base, 900, 800)
    with pytest.raises(ValueError, match="detection input sizes must be positive"):
        base.replace(detection=dataclasses.replace(base.detection, train_min_sizes=(0,)))
    assert grounding.size_groups([(64, 96), (96, 64), (60, 90), (96, 64)]) == [[0, 2], [1, 3]]


def test_training_is_multi_scale_with_the_aspect_ratio_kept():
    from fibervl.data.samples import Sample

    size = grounding.detector_input(get_preset("fiber-base-fine"))
    transforms = size.train_transforms(flip=False)
    image = Image.new("RGB", (640, 480))
    sample = Sample(sample_id="0", image_id=0, boxes=torch.tensor([[64.0, 48.0, 320.0, 240.0]]),
                    category_ids=torch.tensor([1]))
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        out, moved = transforms(image, sample)
        assert min(out.size) in (480, 560, 640, 720, 800) and max(out.size) <= 1333
        assert out.size[0] * 3 == pytest.approx(out.size[1] * 4, abs=4)  # 4:3 kept
        scale = out.size[0] / 640
        assert moved.boxes[0].tolist() == pytest.approx([64 * scale, 48 * scale, 320 * scale, 240 * scale], rel=1e-2)
        seen.add(min(out.size))
    assert seen == {480, 560, 640, 720, 800}


def test_evaluation_keeps_the_aspect_ratio_and_reports_original_pixels(tokenizer_dir, tmp_path, monkeypatch):
    pytest.importorskip("pycocotools")
    from fibervl.metrics.detection import coco_ap

    _, file = write_detection_set("coco", tmp_path)
    reader = CocoDetectionReader(file, tmp_path / "val2017")
    tok = Tokenizer.from_pretrained(tokenizer_dir)
    seen = oracle_detector(monkeypatch, false_positive=False)
    results, image_ids = grounding.detection_results(nn.Linear(1, 1), tok, reader, [1, 2, 3], InputSize(48, 72), 16,
                                                     batch_size=3)
    # 96 x 64 -> 72 x 48, 64 x 96 -> 48 x 72, 80 x 80 -> 48 x 48 (h, w): never squashed
    assert sorted(seen["sizes"]) == sorted([(48, 72), (72, 48), (48, 48)])
    assert sorted(image_ids) == [1, 2, 3]
    gt = {(a["image_id"], a["category_id"]): a["bbox"] for a in reader.annotations}
    for r in results:
        assert r["bbox"] == pytest.approx(gt[r["image_id"], r["category_id"]], abs=0.6)
    assert coco_ap(reader.ground_truth(), results)["AP"] == pytest.approx(100.0)


# ---- grounding and referring expressions -----------------------------------------------------

def test_flickr_any_box_and_merged_box_by_hand():
    """Phrase A has two boxes and is found on one of them; phrase B's single box is found at rank
    2; phrase C is found on its first box only by the union box of its two."""
    gt = [torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10]]),   # A
          torch.tensor([[50.0, 50, 60, 60]]),                  # B
          torch.tensor([[0.0, 20, 10, 30], [12, 20, 22, 30]])]  # C
    preds = [torch.tensor([[0.0, 0, 10, 10]]),                 # A: IoU 1 with a box, 1/3 with the union
             torch.tensor([[0.0, 0, 5, 5], [50, 50, 60, 60]]),  # B: rank 2
             torch.tensor([[0.0, 20, 22, 30]])]                # C: 0.45 with either box, 1 with the union
    any_box = grounding_recall(preds, gt)
    merged = grounding_recall(preds, gt, merge_boxes=True)
    assert any_box == {"r1": pytest.approx(100 / 3), "r5": pytest.approx(200 / 3), "r10": pytest.approx(200 / 3), "phrases": 3}
    assert merged == {"r1": pytest.approx(100 / 3), "r5": pytest.approx(200 / 3), "r10": pytest.approx(200 / 3), "phrases": 3}
    # the same numbers, from different phrases: A counts in any-box only, C in merged-box only
    assert grounding_recall(preds[:1], gt[:1])["r1"] == 100.0 and grounding_recall(preds[:1], gt[:1], merge_boxes=True)["r1"] == 0.0
    assert grounding_recall(preds[2:], gt[2:])["r1"] == 0.0 and grounding_recall(preds[2:], gt[2:], merge_boxes=True)["r1"] == 100.0


def _write_mdetr(path, image_dir, records):
    """MDETR layout: one ``images`` entry per (image, sentence) with its caption, boxes with
    ``tokens_positive``; ``records``: (caption, [(xywh, [[start, end]]), ...])."""
    _save_image(image_dir / "1000.jpg", (100, 50))
    images, anns = [], []
    for i, (caption, boxes) in enumerate(records):
        images.append({"id": i, "file_name": "1000.jpg", "width": 100, "height": 50, "caption": caption,
                       "original_img_id": 1000, "dataset_name": "flickr", "tokens_negative": []})
        for box, spans in boxes:
            anns.append({"id": len(anns), "image_id": i, "bbox": box, "area": box[2] * box[3], "iscrowd": 0,
                         "category_id": 1, "tokens_positive": spans})
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}))
    return path


def test_flickr_evaluation_reports_both_protocols(tokenizer_dir, tmp_path, monkeypatch, eval_batches):
    """An oracle ranking each phrase's first ground-truth box first: any-box finds every phrase,
    merged-box misses "two cats" (one cat is a third of their union box)."""
    file = _write_mdetr(tmp_path / "final_flickr_separateGT_test.json", tmp_path / "images", [
        ("a dog and two cats", [([0, 0, 10, 10], [[2, 5]]), ([20, 0, 10, 10], [[10, 18]]), ([40, 0, 10, 10], [[10, 18]])]),
    ])
    reader = MdetrReader(file, tmp_path / "images")
    current = eval_batches

    def rank(model, batch, phrase_maps, top_k=10):
        b = current["batch"]
        return [[(boxes[:1], torch.ones(1)) for boxes in grounding.phrases_of(pm, bx)[1]]
                for pm, bx in zip(b.positive_maps, b.boxes)]

    monkeypatch.setattr(grounding, "rank_phrase_boxes", rank)
    tok = Tokenizer.from_pretrained(tokenizer_dir)
    m = grounding.evaluate_grounding(nn.Linear(1, 1), tok, reader, 64, 16)
    assert m["phrases"] == 2 and m["r1"] == 100.0 and m["merged_r1"] == 50.0 and m["merged_r10"] == 50.0
    only_any = grounding.evaluate_grounding(nn.Linear(1, 1), tok, reader, 64, 16, protocol="any")
    assert "merged_r1" not in only_any and only_any["r1"] == 100.0
    with pytest.raises(ValueError, match="grounding protocol"):
        grounding.evaluate_grounding(nn.Linear(1, 1), tok, reader, 64, 16, protocol="best")
    # phrases without ground-truth boxes cannot be scored: an error naming the file, not R@1 0.00
    empty = _write_mdetr(tmp_path / "final_flickr_separateGT_val.json", tmp_path / "images", [("a dog", [])])
    with pytest.raises(DataError, match="final_flickr_separateGT_val.json: none of its 1 records has a box"):
        grounding.evaluate_grounding(nn.Linear(1, 1), tok, MdetrReader(empty, tmp_path / "images"), 64, 16)


def test_refcoco_accuracy_is_reported_per_split(tokenizer_dir, tmp_path, monkeypatch):
    assert refexp_split("mdetr_annotations/final_refcoco+_testA.json") == "refcoco+_testA"
    assert refexp_split("final_refcocog_test.json") == "refcocog_test"
    assert refexp_split("finetune_refcoco_val.json") == "refcoco_val"
    assert refexp_split("final_flickr_separateGT_val.json") == ""
    file = _write_mdetr(tmp_path / "final_refcocog_test.json", tmp_path / "images", [
        ("the dog on the left", [([0, 0, 10, 10], [[0, 7]])]), ("the cat on the right", [([60, 0, 30, 40], [[0, 7]])]),
    ])
    reader = MdetrReader(file, tmp_path / "images")

    def rank(model, batch, phrase_maps, top_k=10):  # the dog's box (100 x 50 -> 64 x 32) for both
        return [[(torch.tensor([[0.0, 0.0, 6.4, 6.4]]), torch.ones(1))] for _ in phrase_maps]

    monkeypatch.setattr(grounding, "rank_phrase_boxes", rank)
    tok = Tokenizer.from_pretrained(tokenizer_dir)
    m = grounding.evaluate_refexp(nn.Linear(1, 1), tok, reader, 64, 16, batch_size=1)
    assert m == {"acc": 50.0, "expressions": 2, "acc_refcocog_test": 50.0}


# ---- ODinW -------------------------------------------------------------------------------------

def test_odinw_average_over_datasets(tokenizer_dir, tmp_path, monkeypatch):
    assert average_over_datasets({"A": {"AP": 40.0}, "B": {"AP": 61.0}, "C": {"AP": -1.0}}) == {
        "AP_A": 40.0, "AP_B": 61.0, "AP_C": -1.0, "AP": 50.5, "datasets": 2}
    pytest.importorskip("pycocotools")
    readers = {}
    for name in ("Pets", "Zoo"):
        _, file = write_detection_set("odinw", tmp_path / name)
        readers[name] = OdinwReader(file.parent)
    tok = Tokenizer.from_pretrained(tokenizer_dir)
    oracle_detector(monkeypatch)
    m = grounding.evaluate_odinw(nn.Linear(1, 1), tok, readers, 64, 16)
    assert 0 < m["AP_Pets"] < 100 and m["AP_Zoo"] == m["AP_Pets"] and m["AP"] == m["AP_Pets"] and m["datasets"] == 2


def test_an_lvis_image_keeps_at_most_the_detection_budget_with_one_prompt(tokenizer_dir, tmp_path, monkeypatch):
    """The post-processor keeps ties at its cut (301 of LVIS's 300 were written to a results
    file); for LVIS the budget is a hard limit per image, one prompt or several. One COCO prompt
    keeps the post-processor's own cut (pycocotools limits per image and category)."""
    from fibervl.data.readers.lvis import LvisReader

    spec, file = write_detection_set("lvis", tmp_path)
    reader = LvisReader(file, tmp_path / "coco")
    oracle_detector(monkeypatch)  # a false positive and every true box: 2 to 3 detections an image
    tok = Tokenizer.from_pretrained(tokenizer_dir)
    rows, ids = grounding.detection_results(nn.Linear(1, 1), tok, reader, sorted(reader.categories), 64, 16,
                                            max_detections=1)
    assert len(ids) == 3 and len(rows) == 3 and sorted(r["image_id"] for r in rows) == [1, 2, 3]
    assert all(r["score"] == pytest.approx(0.9) for r in rows)  # each image's best
    _, coco_file = write_detection_set("coco", tmp_path / "c")
    coco = CocoDetectionReader(coco_file, coco_file.parent.parent / "val2017")
    rows, _ = grounding.detection_results(nn.Linear(1, 1), tok, coco, sorted(coco.categories), 64, 16, max_detections=1)
    assert len(rows) == 3 + sum(len(boxes) for _, boxes in IMAGES)


def test_evaluate_detect_on_a_list_of_odinw_data_sets(model_dir, tokenizer_dir, tmp_path, monkeypatch, capsys):
    """``--eval-data 'odinw:odinw/*/valid'`` (or ``{Pets,Zoo}``): each data set's AP over its own
    classes and their mean, as the ODinW-13 / -35 summary; data check reports each data set;
    training, k-shot sets and --results take one data set."""
    import shutil

    from fibervl.data.sources import as_source
    from fibervl.data.sources.check import check_source
    from fibervl.recipes.fine_pretrain import FineData, training_set

    pytest.importorskip("pycocotools")
    one, _ = write_detection_set("odinw", tmp_path)
    shutil.copytree(tmp_path / "odinw" / "Pets", tmp_path / "odinw" / "Zoo")
    oracle_detector(monkeypatch)
    single = _evaluate(model_dir, tokenizer_dir, one, tmp_path / "one.json", capsys)
    for spec in (f"odinw:{tmp_path}/odinw/*/raw/valid", f"odinw:{tmp_path}/odinw/{{Pets,Zoo}}/raw/valid"):
        assert main(["evaluate", "detect", "--model", str(model_dir), "--tokenizer", str(tokenizer_dir),
                     "--eval-data", spec, "data.eval_batch_size=2"]) == 0
        m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert m == {"det_AP_Pets": single["det_AP"], "det_AP_Zoo": single["det_AP"], "det_AP": single["det_AP"],
                     "det_datasets": 2}
    report = check_source(as_source(f"odinw:{tmp_path}/odinw/*/raw/valid"))
    assert [(p["dataset"], p["samples"], p["categories"]) for p in report["parts"]] == [("Pets", 3, 3), ("Zoo", 3, 3)]
    assert main(["evaluate", "detect", "--model", str(model_dir), "--tokenizer", str(tokenizer_dir), "--eval-data",
                 f"odinw:{tmp_path}/odinw/*/raw/valid", "--results", str(tmp_path / "r.json")]) == 1
    assert "one at a time" in capsys.readouterr().err
    assert main(["evaluate", "detect", "--model", str(model_dir), "--tokenizer", str(tokenizer_dir), "--eval-data",
                 f"odinw:{tmp_path}/odinw/{{Pets,Nope}}/raw/valid"]) == 1
    assert "Nope/raw/valid: folder not found" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="training takes one"):
        training_set(FineData(train=(f"odinw:{tmp_path}/odinw/*/raw/valid",)), 64)
    with pytest.raises(ConfigError, match="drawn from one data set"):
        training_set(FineData(train=(f"odinw,shots=1,seed=1:{tmp_path}/odinw/*/raw/valid",)), 64)


# ---- evaluate detect --results ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tokenizer_dir, tmp_path_factory):
    """An untrained micro grounding detector (128 px, 16-token prompts) whose scores start near
    0.5 (the focal-loss prior zeroed), so that it detects something."""
    out = tmp_path_factory.mktemp("protocol_model")
    fine = micro_detector_config()
    torch.manual_seed(0)
    model = FiberModel(fit_to_tokenizer(fine, Tokenizer.from_pretrained(tokenizer_dir)))
    with torch.no_grad():
        model.detector.head.bias0.zero_()
    model.save_pretrained(out)
    return out


def _evaluate(model_dir, tokenizer_dir, spec, results, capsys) -> dict:
    assert main(["evaluate", "detect", "--model", str(model_dir), "--tokenizer", str(tokenizer_dir), "--eval-data", spec,
                 "--results", str(results), "data.eval_batch_size=2"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _pycocotools_ap(gt_file, results_file) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        ev = COCOeval(gt, gt.loadRes(str(results_file)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0] * 100)


@pytest.mark.parametrize("fmt", ["coco", "odinw", "lvis"])
def test_printed_ap_equals_the_official_tools_on_the_results_file(fmt, model_dir, tokenizer_dir, tmp_path, monkeypatch, capsys):
    pytest.importorskip("pycocotools")
    spec, gt_file = write_detection_set(fmt, tmp_path)
    results = tmp_path / "out" / "detections.json"
    oracle_detector(monkeypatch)
    metrics = _evaluate(model_dir, tokenizer_dir, spec, results, capsys)
    rows = json.loads(results.read_text())
    assert rows and all(set(r) == {"image_id", "category_id", "bbox", "score"} for r in rows)
    assert metrics["det_images"] == 3 and 0 < metrics["det_AP"] < 100
    if fmt == "lvis":
        gt = json.loads(gt_file.read_text())
        assert metrics["det_AP"] == pytest.approx(lvis_ap(gt, rows)["AP"], abs=1e-9)
        assert metrics["det_APr"] == pytest.approx(lvis_ap(gt, rows)["APr"], abs=1e-9)
        # COCO's rules score this file differently: the federated ones are what was printed
        from fibervl.metrics.detection import coco_ap

        assert coco_ap(gt, rows)["AP"] != pytest.approx(metrics["det_AP"])
        official = _lvis_package_ap(gt_file, results, monkeypatch)
        if official is not None:
            assert metrics["det_AP"] == pytest.approx(official, abs=1e-9)
    else:  # ODinW: the Roboflow file as it is (category 0 has no box, so pycocotools leaves it out)
        assert metrics["det_AP"] == pytest.approx(_pycocotools_ap(gt_file, results), abs=1e-9)


def _lvis_package_ap(gt_file, results_file, monkeypatch):
    import importlib.util
    import sys
    import types

    import numpy as np

    if importlib.util.find_spec("lvis") is None:
        return None
    for name in ("cv2", "matplotlib", "matplotlib.pyplot"):
        if importlib.util.find_spec(name.split(".")[0]) is None:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setattr(np, "float", float, raising=False)
    from lvis import LVISEval

    ev = LVISEval(str(gt_file), str(results_file), iou_type="bbox")
    ev.run()
    return float(ev.results["AP"]) * 100


def test_evaluate_detect_with_a_model_writes_what_pycocotools_scores(model_dir, tokenizer_dir, tmp_path, capsys):
    pytest.importorskip("pycocotools")
    spec, gt_file = write_detection_set("coco", tmp_path)
    results = tmp_path / "detections.json"
    metrics = _evaluate(model_dir, tokenizer_dir, spec, results, capsys)
    rows = json.loads(results.read_text())
    sizes = {i: size for i, (size, _) in enumerate(IMAGES, start=1)}
    assert len(rows) > 3 and {r["category_id"] for r in rows} <= {1, 2, 3}
    for r in rows:  # in the original image's pixels
        x, y, w, h = r["bbox"]
        assert -0.01 <= x <= x + w <= sizes[r["image_id"]][0] + 0.01 and -0.01 <= y <= y + h <= sizes[r["image_id"]][1] + 0.01
    assert metrics["det_AP"] == pytest.approx(_pycocotools_ap(gt_file, results), abs=1e-9)
    assert main(["evaluate", "ground", "--model", str(model_dir), "--tokenizer", str(tokenizer_dir),
                 "--results", str(results)]) == 1
    assert "belongs to evaluate detect" in capsys.readouterr().err


def test_evaluate_detect_names_a_missing_lvis_image_where_it_belongs(model_dir, tokenizer_dir, tmp_path, capsys):
    """A COCO root without train2017/ (LVIS val draws on it): the error names the path the image
    should have, and says that evaluation cannot skip it (the hint to skip is for annotations)."""
    spec, _ = write_detection_set("lvis", tmp_path)
    (tmp_path / "coco" / "val2017" / "000000000002.jpg").unlink()
    assert main(["evaluate", "detect", "--model", str(model_dir), "--tokenizer", str(tokenizer_dir),
                 "--eval-data", spec]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'coco' / 'val2017' / '000000000002.jpg'} [record 2]: image file not found" in err
    assert "every image of the split is scored" in err and "--skip-bad-records" not in err

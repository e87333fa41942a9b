"""Grounding recall, REC accuracy, COCO AP wrapper, prompt chunking, compatible weight loading."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from fibervl.config import DetectionConfig
from fibervl.metrics.grounding import grounding_recall, rec_accuracy
from fibervl.modeling.fiber import FiberModel
from fibervl.testing.configs import micro_config


def test_grounding_recall_counts_a_phrase_when_any_of_its_boxes_is_hit():
    gt = [
        torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]]),  # two boxes, one phrase
        torch.tensor([[20.0, 20, 40, 40]]),
        torch.tensor([[0.0, 0, 5, 5]]),
    ]
    far = [90.0, 90, 95, 95]
    preds = [
        torch.tensor([[50.0, 50, 60, 61]]),  # rank 1 hits the second box
        torch.tensor([far, far, far, [20.0, 20, 40, 40]]),  # rank 4: R@5 and R@10 only
        torch.zeros(0, 4),  # nothing predicted: a miss
    ]
    r = grounding_recall(preds, gt)
    assert r["phrases"] == 3
    assert r["r1"] == pytest.approx(100 / 3)
    assert r["r5"] == pytest.approx(200 / 3) and r["r10"] == pytest.approx(200 / 3)
    # IoU just under 0.5 does not count
    half = grounding_recall([torch.tensor([[0.0, 0, 10, 4.9]])], [torch.tensor([[0.0, 0, 10, 10]])])
    assert half["r1"] == 0.0


def test_rec_accuracy_at_iou_half():
    targets = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 15, 15]])
    top1 = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5.1], [30, 30, 40, 40]])
    out = rec_accuracy(top1, targets)
    assert out["acc"] == pytest.approx(200 / 3) and out["expressions"] == 3
    with pytest.raises(ValueError):
        rec_accuracy(top1[:2], targets)


def _gt():
    cats = [{"id": 1, "name": "star", "frequency": "f"}, {"id": 2, "name": "heart", "frequency": "r"}]
    images = [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.jpg"} for i in range(3)]
    anns = [
        {"id": 1, "image_id": 0, "category_id": 1, "bbox": [10, 10, 20, 20]},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [40, 40, 30, 30]},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [5, 50, 60, 40]},
    ]
    return {"images": images, "annotations": anns, "categories": cats}


def test_coco_ap_perfect_wrong_and_frequency_groups():
    pytest.importorskip("pycocotools")
    from fibervl.metrics.detection import ap_by_frequency, coco_ap

    gt = _gt()
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in gt["annotations"]]
    assert coco_ap(gt, perfect)["AP"] == pytest.approx(100.0)
    wrong_class = [{**r, "category_id": 3 - r["category_id"]} for r in perfect]
    assert coco_ap(gt, wrong_class)["AP"] == pytest.approx(0.0)
    # restricted to category 2, only its detection matters
    assert coco_ap(gt, perfect[:2], category_ids=[2])["AP"] == pytest.approx(100.0)
    assert coco_ap(gt, [], category_ids=[1])["AP"] == 0.0
    groups = ap_by_frequency(gt, perfect[:2])  # star found once of twice, heart found
    assert groups["APr"] == pytest.approx(100.0)
    assert 0.0 < groups["APf"] < 100.0


def test_prompt_chunks_split_long_vocabularies(shapes_tiny):
    from fibervl.data import Tokenizer
    from fibervl.tasks.grounding import prompt_chunks

    tok = Tokenizer.from_pretrained(shapes_tiny / "tokenizer")
    names = ["circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "heart", "ring", "crescent", "red_star"]
    cats = dict(enumerate(names, start=1))
    chunks = prompt_chunks(cats, list(cats), tok, max_length=40, chunk_size=4)
    assert [c.category_ids for c in chunks] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11]]
    assert chunks[2].text == "ring. crescent. red star"
    for c in chunks:
        assert c.positive_map.shape == (len(c.category_ids), c.input_ids.shape[1])
        assert (c.positive_map.sum(1) > 0).all()
        # rows of different classes never share a token
        assert (c.positive_map.sum(0) <= 1).all()
    # 40 names do not fit 8 tokens: the prompts close early, every class still named once, whole
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        short = prompt_chunks(cats, list(cats), tok, max_length=8, chunk_size=40)
    assert [i for c in short for i in c.category_ids] == list(cats) and len(short) > 3
    assert all(c.input_ids.shape[1] <= 8 and (c.positive_map.sum(1) > 0).all() for c in short)
    for c in short:  # nothing truncated: the prompt's tokens are those of its text untruncated
        assert c.input_ids.shape[1] == len(tok.encode(c.text)[0])
    # a name longer than a whole prompt is truncated, with a warning naming it; the others stay whole
    long = {**cats, 12: " ".join(["hexagon"] * 12)}
    with pytest.warns(UserWarning, match="hexagon hexagon.*longer than 8 tokens and is truncated"):
        parts = prompt_chunks(long, list(long), tok, max_length=8, chunk_size=40)
    assert [i for c in parts for i in c.category_ids] == list(long) and parts[-1].category_ids == [12]
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no token of the class name 'circle'"):
        prompt_chunks(cats, list(cats), tok, max_length=2)  # <s> and </s> alone


def test_compatible_init_reports_new_and_unused_weights(tmp_path):
    from fibervl.errors import CheckpointError
    from fibervl.modeling.factory import create_model

    coarse_cfg = micro_config()
    coarse = FiberModel(coarse_cfg)
    coarse.save_pretrained(tmp_path / "coarse")
    fine_cfg = coarse_cfg.replace(
        vision=dataclasses.replace(coarse_cfg.vision, feature_norms=(1, 2, 3)), heads=(),
        detection=DetectionConfig(channels=16, num_blocks=1, num_groups=4, max_query_len=16),
    )
    fine, report = create_model(fine_cfg, init=tmp_path / "coarse", with_report=True)
    new, unused = report.new, report.unused
    assert new and all(k.startswith(("detector.", "vision.feature_norms.")) for k in new)
    assert any(k.startswith("detector.head.") for k in new) and any(k.startswith("vision.feature_norms.") for k in new)
    assert unused and all(k.startswith(("heads.", "cross_modal.", "temperature")) for k in unused)
    coarse_state = coarse.state_dict()
    for k, v in fine.state_dict().items():
        if k in coarse_state:
            assert torch.equal(v, coarse_state[k]), k
    # a shared name with another shape is an error naming it
    wider = fine_cfg.replace(text=dataclasses.replace(fine_cfg.text, vocab_size=101))
    with pytest.raises(CheckpointError, match="text.embeddings"):
        create_model(wider, init=tmp_path / "coarse")


def _many_class_coco(root, n_classes: int, classes_per_image: list[int]):
    """A COCO detection file of ``n_classes`` long class names, one image per entry of
    ``classes_per_image`` with one box of each of that many classes."""
    import json

    from PIL import Image

    (root / "images").mkdir(parents=True)
    cats = [{"id": 3 * k + 1, "name": f"small red star {k}", "supercategory": "thing"}
            for k in range(n_classes)]
    images, anns = [], []
    for n, k in enumerate(classes_per_image):
        Image.new("RGB", (64, 48), (90, 120, 150)).save(root / "images" / f"{n:012d}.jpg")
        images.append({"id": n + 1, "file_name": f"{n:012d}.jpg", "width": 64, "height": 48})
        for j in range(k):
            anns.append({"id": len(anns) + 1, "image_id": n + 1, "category_id": cats[j]["id"], "bbox": [2, 2, 20, 20],
                         "area": 400.0, "iscrowd": 0})
    (root / "instances_train.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root / "instances_train.json", root / "images"


def test_detection_prompts_fit_the_query_length_without_cutting_a_name(shapes_tiny, tmp_path):
    """As GLIP builds them: present classes first, then the negatives that still fit whole; a
    prompt never ends in half a name and never loses a present class that fits."""
    from fibervl.data import CocoDetectionReader, Tokenizer
    from fibervl.data.shapes import ShapesDataset
    from fibervl.data.transforms import eval_transforms
    from fibervl.tasks.grounding import DetectionPromptDataset, _names_that_fit, make_processor

    tok = Tokenizer.from_pretrained(ShapesDataset(shapes_tiny).tokenizer_dir)
    det = CocoDetectionReader(*_many_class_coco(tmp_path, 30, [2, 1, 3, 12]))
    max_length = 48
    assert _names_that_fit(list(det.categories.values()), tok, max_length) < 12  # 30, or 12, names overflow
    processor = make_processor(eval_transforms(64))
    for max_classes in (25, 0):  # sampled negatives; every class in a fixed order
        ds = DetectionPromptDataset(det, det.categories, processor, max_classes=max_classes, tokenizer=tok,
                                    max_length=max_length)
        torch.manual_seed(0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            items = [ds[i].sample for i in range(len(det))]
        for i, item in enumerate(items[:3]):
            ids = item.meta["prompt_category_ids"]
            names = [det.categories[c] for c in ids]
            assert _names_that_fit(names, tok, max_length) == len(ids)  # every name whole
            assert set(det[i].category_ids.tolist()) <= set(ids) and item.num_boxes == det[i].num_boxes
            assert len(ids) > len(set(det[i].category_ids.tolist()))  # negatives fill the rest
            if not max_classes:
                assert ids == sorted(ids)
        # the last image has more classes than fit: it keeps those that fit, with a warning, once
        crowded = items[3]
        kept = crowded.meta["prompt_category_ids"]
        assert 0 < len(kept) < 12 and crowded.num_boxes == len(kept)
        assert [str(w.message) for w in caught if "holds" in str(w.message)] != []
        assert sum("holds" in str(w.message) for w in caught) == 1
    # without a tokenizer the prompt is as long as asked (the collator would cut it)
    plain = DetectionPromptDataset(det, det.categories, processor, max_classes=25)
    torch.manual_seed(0)
    assert len(plain[0].sample.meta["prompt_category_ids"]) == 25


def test_detection_prompts_keep_present_classes_and_sample_negatives(shapes_tiny):
    from fibervl.data.shapes import ShapesDataset
    from fibervl.data.transforms import eval_transforms
    from fibervl.tasks.grounding import DetectionPromptDataset, make_processor

    det = ShapesDataset(shapes_tiny).detection("train")
    ds = DetectionPromptDataset(det, det.categories, make_processor(eval_transforms(128)), max_classes=6)
    torch.manual_seed(0)
    prompts = set()
    for i in range(8):
        item = ds[i].sample
        ids = item.meta["prompt_category_ids"]
        present = set(det[i].category_ids.tolist())
        assert present <= set(ids) and len(ids) == max(6, len(present))
        assert item.num_boxes == det[i].num_boxes  # every box's class is named
        for (s, e), c in zip([sp[0] for sp in item.tokens_positive], item.category_ids.tolist()):
            assert item.text[s:e] == det.categories[c]
        prompts.add(item.text)
    assert len(prompts) > 1  # negatives and order vary

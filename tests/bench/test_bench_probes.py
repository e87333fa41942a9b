"""bench/vqa_breakdown.py scores VQA answers per question form with the official metric, and
bench/object_token_probe.py reads each object's token where the object is."""

from __future__ import annotations

import collections
import json

import pytest
import torch

from fibervl.predict.processor import InputProcessor


def test_vqa_breakdown_scores_each_form_with_the_official_metric(load_bench):
    breakdown = load_bench("vqa_breakdown").breakdown
    annotations = [
        {"question_id": 1, "template": "color", "answers": [{"answer": "red"}] * 10},
        {"question_id": 2, "template": "color", "answers": [{"answer": "blue"}] * 10},
        # two of ten annotators said "two": the official leave-one-out score is 0.6
        {"question_id": 3, "template": "count", "answers": [{"answer": "2"}] * 2 + [{"answer": "3"}] * 8},
        {"question_id": 4, "template": "count", "answers": [{"answer": "3"}] * 10},  # not answered: left out
    ]
    rows = breakdown(annotations, {1: "red", 2: "red", 3: "two"}, "template")
    assert rows["color"] == (50.0, 2)
    assert rows["count"][1] == 1 and rows["count"][0] == pytest.approx(60.0)
    with pytest.raises(ValueError, match="no field 'question_type'"):
        breakdown(annotations, {1: "red"}, "question_type")


class CellIndexTower:
    """Stands in for a model: the token of cell (line, col) of a 4x4 grid holds its index."""

    def unfused_image_tokens(self, pixels):
        return torch.arange(16.0).repeat(pixels.shape[0], 1)[..., None].expand(-1, -1, 3)


def test_object_token_probe_reads_the_cell_of_each_objects_centre(shapes_tiny, load_bench):
    probe = load_bench("object_token_probe")
    processor = InputProcessor(tokenizer=None, image_size=128, text_length=8)
    tokens, colours, shapes, counts = probe.object_tokens(CellIndexTower(), processor, shapes_tiny, "test", 5, False)
    coco = json.loads((shapes_tiny / "detection" / "instances_test.json").read_text())
    images = sorted(coco["images"], key=lambda im: im["id"])[:5]
    objects = [a for im in images for a in coco["annotations"] if a["image_id"] == im["id"]]
    assert len(tokens) == len(objects) == len(colours) == len(shapes) == len(counts)
    for token, a, colour in zip(tokens, objects, colours):
        image = next(im for im in images if im["id"] == a["image_id"])
        x, y, w, h = a["bbox"]
        cell = int((y + h / 2) * 4 / image["height"]) * 4 + int((x + w / 2) * 4 / image["width"])
        assert token[0] == cell and colour == a["attributes"]["color"]
    # held-out shapes are left out when asked
    seen = probe.object_tokens(CellIndexTower(), processor, shapes_tiny, "test", 20, True)[2]
    held_out = json.loads((shapes_tiny / "dataset.json").read_text())["held_out_shapes"]
    assert seen and not set(seen) & set(held_out)


class StageTower(CellIndexTower):
    """Its stage 1 is an 8x8 grid [B, 8, 8, 3] whose cell (line, col) holds 100 + its index."""

    def vision(self, pixels):
        stage1 = (100 + torch.arange(64.0)).reshape(1, 8, 8, 1).expand(pixels.shape[0], -1, -1, 3)
        return [None, stage1, None]


def test_object_token_probe_reads_a_chosen_stages_grid(shapes_tiny, load_bench):
    probe = load_bench("object_token_probe")
    processor = InputProcessor(tokenizer=None, image_size=128, text_length=8)
    tokens = probe.object_tokens(StageTower(), processor, shapes_tiny, "test", 5, False, stage=1)[0]
    coco = json.loads((shapes_tiny / "detection" / "instances_test.json").read_text())
    images = sorted(coco["images"], key=lambda im: im["id"])[:5]
    objects = [(a, im) for im in images for a in coco["annotations"] if a["image_id"] == im["id"]]
    expected = [100 + int((a["bbox"][1] + a["bbox"][3] / 2) * 8 / im["height"]) * 8
                + int((a["bbox"][0] + a["bbox"][2] / 2) * 8 / im["width"]) for a, im in objects]
    assert tokens[:, 0].tolist() == expected


def test_linear_probe_learns_a_separable_attribute(load_bench):
    probe = load_bench("object_token_probe")
    generator = torch.Generator().manual_seed(0)
    labels = ["red", "blue", "green"] * 100
    centres = {"red": [1.0, 0.0], "blue": [-1.0, 0.0], "green": [0.0, 1.0]}
    x = torch.cat([torch.tensor([centres[c] for c in labels]), torch.zeros(300, 4)], 1)
    x = x + 0.1 * torch.randn(300, 6, generator=generator)
    right = probe.linear_probe(x[:240], labels[:240], x[240:], labels[240:])
    assert len(right) == 60 and all(right)
    # a probe cannot read what the features do not hold: labels independent of them stay near chance
    shuffled = [labels[i] for i in torch.randperm(300, generator=generator).tolist()]
    assert sum(probe.linear_probe(x[:240], shuffled[:240], x[240:], shuffled[240:])) < 40


def test_detection_confusion_labels_each_object_by_its_best_overlapping_detection(load_bench):
    probe = load_bench("detection_confusion")
    annotations = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
        {"image_id": 1, "category_id": 2, "bbox": [50, 50, 10, 10]},
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10]},
    ]
    detections = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.4},
        {"image_id": 1, "category_id": 2, "bbox": [1, 1, 10, 10], "score": 0.9},  # IoU 0.68: the label
        {"image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.8},
        {"image_id": 1, "category_id": 2, "bbox": [50, 50, 2, 2], "score": 0.95},  # IoU 0.04: ignored
        {"image_id": 2, "category_id": 1, "bbox": [30, 30, 10, 10], "score": 0.7},  # overlaps nothing
    ]
    table = probe.confusion(annotations, detections)
    assert table[1] == {2: 1, 0: 1} and table[2] == {1: 1}
    own, elsewhere = probe.stray_detections(annotations, detections, 1)
    assert own == [0.4] and sorted(elsewhere) == [0.7, 0.8]


def test_retrieval_misses_counts_wrong_picks_of_an_image_with_the_same_objects(load_bench):
    probe = load_bench("retrieval_misses")
    # three images; image 1 shows what image 0 shows; texts 0-2 belong to images 0-2
    contents = [(("red", "star"),), (("red", "star"),), (("blue", "circle"),)]
    text_to_image = torch.tensor([0, 1, 2])
    candidates = torch.tensor([[0, 1], [0, 1], [2, 0]])
    scores = torch.tensor([[0.1, 0.9], [0.9, 0.1], [0.8, 0.2]])
    # image 0 picks text 1 (same objects), image 1 picks text 0 (same objects), image 2 is right
    counts = probe.pick_counts(candidates, scores, text_to_image, contents)
    assert counts["misses"] == 2 and counts["same_objects"] == 2
    assert counts["r1"] == pytest.approx(100 / 3) and counts["right_or_same"] == pytest.approx(100.0)
    # an image the annotations do not list is never "the same"
    counts = probe.pick_counts(candidates, scores, text_to_image, [None, None, (("blue", "circle"),)])
    assert counts["same_objects"] == 0 and counts["right_or_same"] == pytest.approx(100 / 3)


def test_retrieval_misses_reads_each_images_coloured_shapes(shapes_tiny, load_bench):
    probe = load_bench("retrieval_misses")
    coco = json.loads((shapes_tiny / "detection" / "instances_test.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    image = coco["images"][0]
    objects = sorted((a["attributes"]["color"], names[a["category_id"]])
                     for a in coco["annotations"] if a["image_id"] == image["id"])
    got = probe.image_contents(shapes_tiny, "test", [f"somewhere/{image['file_name']}", "elsewhere/unknown.jpg"])
    assert got == [tuple(objects), None]


def test_ridge_r2_reads_a_linear_target_and_not_an_independent_one(load_bench):
    ridge_r2 = load_bench("fusion_attention_probe").ridge_r2
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(600, 10, generator=generator)
    linear = x[:, :2] @ torch.tensor([[1.0, 0.0], [0.5, -2.0]])
    r2 = ridge_r2(x[:500], linear[:500], x[500:], linear[500:])
    assert (r2 > 0.99).all()
    noise = torch.randn(600, 2, generator=generator)
    assert (ridge_r2(x[:500], noise[:500], x[500:], noise[500:]) < 0.1).all()


def test_fusion_attention_probe_keeps_phrases_that_ground_one_box(shapes_tiny, load_bench):
    probe = load_bench("fusion_attention_probe")
    items = probe.single_object_phrases(shapes_tiny, "val", 1000)
    coco = json.loads((shapes_tiny / "mdetr_annotations" / "final_shapes_grounding_val.json").read_text())
    captions = {im["caption"] for im in coco["images"]}
    assert items
    for path, caption, (start, end), box in items:
        assert path.is_file() and caption in captions and 0 <= start < end <= len(caption)
        same_span = [a for a in coco["annotations"] if a["tokens_positive"] == [[start, end]] and a["bbox"] == box]
        assert same_span
    # a phrase naming two objects ("two red stars") is left out
    many = collections.Counter((a["image_id"], tuple(map(tuple, a["tokens_positive"]))) for a in coco["annotations"])
    assert len(items) == sum(1 for (image_id, spans), n in many.items() if n == 1 and len(spans) == 1)


def test_vqa_readout_probe_reads_the_chosen_templates_of_a_split(shapes_tiny, load_bench):
    probe = load_bench("vqa_readout_probe")
    rows = probe.questions(shapes_tiny, "train", {"color", "side"}, 3)
    annotations = json.loads((shapes_tiny / "vqa" / "v2_shapes_train_annotations.json").read_text())["annotations"]
    kinds = collections.Counter(a["template"] for a in annotations)
    assert collections.Counter(row[2] for row in rows) == {t: min(3, kinds[t]) for t in ("color", "side") if kinds[t]}
    for image, question, _, answer in rows:
        assert image.is_file() and question.endswith("?") and answer


def test_relation_probe_compares_two_places_that_a_pooled_readout_loses(load_bench):
    """Two marked tokens of a 4x4 grid, A (channel 0) and B (channel 1): is A left of B? The
    relation network, which sees each pair of tokens with its places, learns it; an MLP on the
    max over the grid, which keeps that both are there but not where, stays near the majority
    answer (A is left of B in 37 % of the draws)."""
    probe = load_bench("vqa_readout_probe")
    generator = torch.Generator().manual_seed(0)
    n = 1200
    grid = torch.zeros(n, 16, 3)
    cells = torch.stack([torch.randperm(16, generator=generator)[:2] for _ in range(n)])
    grid[torch.arange(n), cells[:, 0], 0] = 1.0
    grid[torch.arange(n), cells[:, 1], 1] = 1.0
    grid[..., 2] = torch.rand(n, 16, generator=generator)  # clutter
    grid = grid + 0.01 * torch.randn(n, 16, 3, generator=generator)
    labels = (cells[:, 0] % 4 < cells[:, 1] % 4).long()
    text = torch.randn(n, 2, 3, generator=generator)  # the same question for all: nothing to read
    train, val = slice(0, 1000), slice(1000, n)
    names = ["left"] * (n - 1000)
    small = probe.RelationProbe(grid[train], text[train], 2, width=16, hidden=32)
    relation = probe.train_probe(small, (grid[train], text[train]), labels[train], steps=250, batch_size=32)
    assert probe.accuracy_by_template(relation, (grid[val], text[val]), labels[val], names)["left"] > 90
    pooled = grid.amax(1)
    mlp = probe.train_probe(probe.MlpProbe(pooled[train], 2), (pooled[train],), labels[train], steps=250, batch_size=32)
    assert probe.accuracy_by_template(mlp, (pooled[val],), labels[val], names)["left"] < 70

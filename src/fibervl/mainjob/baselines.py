"""The baseline of every task of the main job: what a model that does not look (or a random
guess) reaches on the same evaluation items.

Every baseline is computed over exactly the items the task evaluates (the first ``limit``
records of the split, as the evaluations count them):

* VQA and NLVR2, *text-only priors* (and NLVR2's chance and majority), REC, *random object*: the
  definitions of the generator's ``baselines.json`` (:mod:`fibervl.data.shapes.baselines`),
  re-computed on the evaluated records;
* phrase grounding, *random object*: the expected R@1 of picking one of the image's objects at
  random (a phrase is found when the pick overlaps any of its boxes with IoU >= 0.5);
* phrase grounding and referring expressions, *chance*: R@1 of one random box per phrase,
  not knowing the objects (reported beside the random-object baseline, in the details);
* detection, *chance*: COCO AP of random boxes (sizes drawn from the training boxes, uniform
  positions, classes and scores), averaged over a few seeds.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import torch

from ..data.shapes import ShapesDataset
from ..data.shapes.baselines import compute_baselines
from ..metrics.detection import coco_ap
from ..boxes import box_iou


def evaluated_baselines(root: str | Path, split: str, task: str, limit: int = 0) -> dict:
    """The text-only / random-object baselines of ``task`` ("vqa", "nlvr2" or "refexp") over the
    first ``limit`` records of ``split`` (0: all): the items the task's evaluation scores, so
    that a limited evaluation is never compared with a whole-split baseline."""
    return compute_baselines(root, (split,), (task,), limit)[split][task]


def _objects_by_image(annotation_file: Path) -> dict[int, torch.Tensor]:
    gt = json.loads(annotation_file.read_text(encoding="utf-8-sig"))
    boxes = defaultdict(list)
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        boxes[a["image_id"]].append([x, y, x + w, y + h])
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in boxes.items()}


def _phrase_boxes(sample) -> list[torch.Tensor]:
    """The boxes of each phrase of a grounding / referring record ([n_i, 4] each): boxes whose
    ``tokens_positive`` spans are identical belong to one phrase."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for b, spans in enumerate(sample.tokens_positive):
        groups[tuple(map(tuple, spans))].append(b)
    return [sample.boxes[members].float() for members in groups.values()]


def grounding_random_object(root: str | Path, split: str, limit: int = 0) -> float:
    """Expected phrase-grounding R@1 (percent) of a uniformly random object of the image, over
    the first ``limit`` grounding records of ``split`` (0: all), as the evaluation counts them."""
    shapes = ShapesDataset(root)
    objects = _objects_by_image(Path(root) / "detection" / f"instances_{split}.json")
    hits, phrases = 0.0, 0
    for i, sample in enumerate(shapes.grounding(split)):
        if limit and i >= limit:
            break
        candidates = objects.get(sample.image_id)
        for boxes in _phrase_boxes(sample):
            phrases += 1
            if candidates is None or len(candidates) == 0:
                continue
            iou = box_iou(candidates, boxes)
            hits += float((iou >= 0.5).any(dim=1).float().mean())
    return 100.0 * hits / max(phrases, 1)


def _train_box_sizes(root: Path) -> list[list[float]]:
    train = json.loads((root / "detection" / "instances_train.json").read_text(encoding="utf-8-sig"))
    return [a["bbox"][2:] for a in train["annotations"]] or [[16.0, 16.0]]


def _random_box(rng: random.Random, sizes: list[list[float]], width: float, height: float) -> tuple[float, ...]:
    """``(x, y, w, h)``: a training box size, placed uniformly inside a ``width x height`` image."""
    w, h = rng.choice(sizes)
    return rng.uniform(0, max(width - w, 0)), rng.uniform(0, max(height - h, 0)), w, h


def phrase_chance_random_box(root: str | Path, split: str, source: str, limit: int = 0, seeds: int = 20) -> float:
    """Expected R@1 (percent) of guessing one random box per phrase, not knowing the objects:
    its size drawn from the training boxes, its position uniform in the image; a phrase is hit
    when the box overlaps one of its boxes with IoU >= 0.5. ``source``: "grounding" or
    "refexp" (one phrase per expression); the first ``limit`` records (0: all); mean of
    ``seeds`` draws. The random-object baseline, by contrast, is given the true boxes."""
    root = Path(root)
    sizes = _train_box_sizes(root)
    records = list(getattr(ShapesDataset(root), source)(split))
    records = records[:limit] if limit else records
    # (image width, image height, the phrase's boxes), read once for every draw
    phrases = [(s.width, s.height, boxes) for s in records for boxes in _phrase_boxes(s)]
    rates = []
    for seed in range(seeds):
        rng = random.Random(seed)
        hits = 0
        for width, height, boxes in phrases:
            x, y, w, h = _random_box(rng, sizes, width, height)
            hits += int((box_iou(torch.tensor([[x, y, x + w, y + h]]), boxes) >= 0.5).any())
        rates.append(100.0 * hits / max(len(phrases), 1))
    return sum(rates) / len(rates)


def detection_chance_ap(root: str | Path, split: str, category_ids: list[int], limit: int = 0,
                        boxes_per_image: int = 10, seeds: int = 3) -> float:
    """COCO AP (percent) of random detections on the first ``limit`` images of ``split``."""
    root = Path(root)
    gt = json.loads((root / "detection" / f"instances_{split}.json").read_text(encoding="utf-8-sig"))
    sizes = _train_box_sizes(root)
    images = gt["images"][:limit] if limit else gt["images"]
    aps = []
    for seed in range(seeds):
        rng = random.Random(seed)
        results = []
        for img in images:
            for _ in range(boxes_per_image):
                x, y, w, h = _random_box(rng, sizes, img["width"], img["height"])
                results.append({"image_id": img["id"], "category_id": rng.choice(category_ids),
                                "score": rng.random(), "bbox": [x, y, w, h]})
        aps.append(coco_ap(gt, results, category_ids, [img["id"] for img in images])["AP"])
    return sum(aps) / len(aps)

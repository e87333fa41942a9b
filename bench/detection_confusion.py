"""What a grounding detector calls each object when every class is named, and the AP of each class.

    python bench/detection_confusion.py RUN/stages/detection/model --data RUN/data [--images 300]

Runs the detector on the first ``--images`` test images of a shapes data set with every class
(seen and held out) named in the prompts, as zero-shot AP is scored. For each annotated object it
takes the detections overlapping it (IoU >= 0.5) and reports which label the best-scoring of them
carries, then each class's AP alone (pycocotools) and, for the held-out classes, how many of their
detections sit on objects of other classes with a score above the median of those on their own
objects: the false positives that sink a class's AP. Results: docs/results.md, "where zero-shot AP
goes".
"""

from __future__ import annotations

import argparse
import collections
import statistics
from pathlib import Path

import torch

from fibervl.boxes import box_iou
from fibervl.data.shapes.layout import ShapesDataset
from fibervl.metrics.detection import coco_ap
from fibervl.recipes.common import load_model_dir
from fibervl.tasks.grounding import detection_results

IOU = 0.5


def _xyxy(boxes: list[list[float]]) -> torch.Tensor:
    """COCO [x, y, w, h] boxes -> [N, 4] corners."""
    t = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    return torch.cat([t[:, :2], t[:, :2] + t[:, 2:]], dim=1)


def confusion(annotations: list[dict], detections: list[dict]) -> dict[int, collections.Counter]:
    """{annotated class: Counter of the label of each of its objects' best overlapping detection,
    0 where no detection overlaps it at IoU >= 0.5}."""
    by_image = collections.defaultdict(list)
    for d in detections:
        by_image[d["image_id"]].append(d)
    table: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for ann in annotations:
        found = by_image.get(ann["image_id"], [])
        label = 0
        if found:
            overlap = box_iou(_xyxy([ann["bbox"]]), _xyxy([d["bbox"] for d in found]))[0]
            over = [d for d, iou in zip(found, overlap.tolist()) if iou >= IOU]
            if over:
                label = max(over, key=lambda d: d["score"])["category_id"]
        table[ann["category_id"]][label] += 1
    return table


def stray_detections(annotations: list[dict], detections: list[dict], category: int) -> tuple[list[float], list[float]]:
    """Scores of ``category``'s detections on an object of that class (IoU >= 0.5) and elsewhere."""
    by_image = collections.defaultdict(list)
    for ann in annotations:
        by_image[ann["image_id"]].append(ann)
    own, elsewhere = [], []
    for d in detections:
        if d["category_id"] != category:
            continue
        anns = [a for a in by_image.get(d["image_id"], []) if a["category_id"] == category]
        hit = bool(anns) and bool((box_iou(_xyxy([d["bbox"]]), _xyxy([a["bbox"] for a in anns])) >= IOU).any())
        (own if hit else elsewhere).append(d["score"])
    return own, elsewhere


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a FIBER grounding-detector model or run directory")
    parser.add_argument("--data", type=Path, required=True, help="the shapes data set")
    parser.add_argument("--images", type=int, default=300, help="test images (0: all)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--text-len", type=int, default=40)
    args = parser.parse_args()
    model, tokenizer, _ = load_model_dir(args.model)
    shapes = ShapesDataset(args.data)
    reader = shapes.detection("test")
    names = reader.categories
    held_out = shapes.held_out_category_ids
    named = shapes.seen_category_ids + held_out
    found, image_ids = detection_results(model, tokenizer, reader, named, args.image_size, args.text_len, limit=args.images)
    gt = reader.ground_truth()
    kept = set(image_ids)
    annotations = [a for a in gt["annotations"] if a["image_id"] in kept]
    table = confusion(annotations, found)
    print("| object | objects | labelled right | most often labelled | AP of its class |\n| --- | ---: | ---: | --- | ---: |")
    for c in held_out + shapes.seen_category_ids:
        n = sum(table[c].values())
        common = ", ".join(f"{names.get(k, 'nothing')} {v}" for k, v in table[c].most_common(3))
        held = " (held out)" if c in held_out else ""
        ap = coco_ap(gt, found, [c], image_ids)["AP"]
        print(f"| {names[c]}{held} | {n} | {100 * table[c][c] / max(n, 1):.0f} % | {common} | {ap:.2f} |")
    for c in held_out:
        own, elsewhere = stray_detections(annotations, found, c)
        median = statistics.median(own) if own else float("inf")
        above = sum(s > median for s in elsewhere)
        print(f"'{names[c]}': {len(own)} detections on a {names[c]} (median score {median:.3f}), "
              f"{len(elsewhere)} elsewhere, {above} of them above that median")


if __name__ == "__main__":
    main()

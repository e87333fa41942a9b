"""Does the image tower keep each object's colour and shape in the token where the object is?

    python bench/object_token_probe.py RUN/stages/coarse/model --data RUN/data [--seen-only] [--stage S]

For every object of a shapes data set's detection files (``detection/instances_{split}.json``:
box, category, ``color`` attribute), takes the token of the tower's last stage, run unimodally
(:meth:`FiberModel.unfused_image_tokens`, what the fused layers and the dual encoder start from),
whose cell holds the object's centre (``--stage S``: the output of stage S, counted from 0).
A linear classifier per attribute is trained on the training split's objects and tested on the
test split's, by the number of objects in the image: if the colour is there but the fused model
answers "what colour is the star?" with another object's colour, the loss is in the fusion, not
the tower. ``--seen-only`` leaves out held-out shapes (the training box files hold none, so the
probe cannot learn them).
Results: docs/results.md, "Diagnosis: VQA by question form".
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch

import fibervl


def object_tokens(model, processor, data: Path, split: str, limit: int, seen_only: bool, batch_size: int = 64,
                  stage: int | None = None):
    """(tokens [N, C] float, colours, shapes, objects in the image) for the objects of the first
    ``limit`` images of ``split``; ``stage``: read that stage's output instead of the last one's."""
    coco = json.loads((data / "detection" / f"instances_{split}.json").read_text(encoding="utf-8"))
    names = {c["id"]: c["name"] for c in coco["categories"]}
    held_out = {c["id"] for c in coco["categories"] if not c.get("seen", True)}
    objects = collections.defaultdict(list)
    for a in coco["annotations"]:
        objects[a["image_id"]].append(a)
    images = sorted(coco["images"], key=lambda im: im["id"])[:limit]
    tokens, colours, shapes, counts = [], [], [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        pixels = processor.images([processor.open(str(data / "images" / split / im["file_name"])) for im in chunk]).pixels
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            if stage is None:
                grid_tokens = model.unfused_image_tokens(pixels).float()  # [B, h*w, C], row-major
            else:
                grid_tokens = model.vision(pixels)[stage].flatten(1, 2).float()
        side = round(grid_tokens.shape[1] ** 0.5)
        for row, im in enumerate(chunk):
            for a in objects[im["id"]]:
                if seen_only and a["category_id"] in held_out:
                    continue
                x, y, w, h = a["bbox"]
                col = min(side - 1, int((x + w / 2) * side / im["width"]))
                line = min(side - 1, int((y + h / 2) * side / im["height"]))
                tokens.append(grid_tokens[row, line * side + col])
                colours.append(a["attributes"]["color"])
                shapes.append(names[a["category_id"]])
                counts.append(len(objects[im["id"]]))
    return torch.stack(tokens), colours, shapes, counts


def linear_probe(train_x, train_y: list[str], test_x, test_y: list[str], steps: int = 300) -> list[bool]:
    """Standardised features, a linear layer trained by Adam on cross-entropy; right or wrong per test item."""
    classes = {c: i for i, c in enumerate(sorted(set(train_y) | set(test_y)))}
    mean, std = train_x.mean(0), train_x.std(0) + 1e-5
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    targets = torch.tensor([classes[c] for c in train_y])
    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(train_x.shape[1], len(classes))
    with torch.no_grad():
        layer.weight.normal_(0, 0.01, generator=generator)
        layer.bias.zero_()
    optimiser = torch.optim.Adam(layer.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(layer(train_x), targets).backward()
        optimiser.step()
    with torch.no_grad():
        predicted = layer(test_x).argmax(1).tolist()
    return [p == classes[c] for p, c in zip(predicted, test_y)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a FIBER model or run directory")
    parser.add_argument("--data", type=Path, required=True, help="the shapes data set")
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--test-images", type=int, default=300)
    parser.add_argument("--seen-only", action="store_true", help="leave out objects of held-out shapes")
    parser.add_argument("--stage", type=int, help="probe this stage's output (from 0) instead of the last stage's")
    args = parser.parse_args()
    model, processor = fibervl.load(args.model, task="retrieval")
    model.eval()
    train = object_tokens(model, processor, args.data, "train", args.train_images, args.seen_only, stage=args.stage)
    test = object_tokens(model, processor, args.data, "test", args.test_images, args.seen_only, stage=args.stage)
    print("| attribute | test accuracy by objects in the image (objects) |\n| --- | --- |")
    for name, k in (("colour", 1), ("shape", 2)):
        right = linear_probe(train[0], train[k], test[0], test[k])
        by = collections.defaultdict(list)
        for ok, n in zip(right, test[3]):
            by[n].append(ok)
        print(f"| {name} | " + ", ".join(f"{n}: {100 * sum(v) / len(v):.1f} ({len(v)})" for n, v in sorted(by.items())) + " |")


if __name__ == "__main__":
    main()

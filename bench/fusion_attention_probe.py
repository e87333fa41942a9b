"""Does a fused word look at its object? For each phrase of the shapes set's grounding captions
that names exactly one object, two measurements on a fused model:

* the text-to-image attention of the phrase's tokens (mean over them) in each fused text layer:
  the mass on the image token under the object's centre, and the largest weight, per head
  (uniform attention over an ``h x w`` grid gives ``1 / (h w)`` to both);
* where the object lies, read back by ridge regression (fitted on the training phrases, scored
  as R^2 on val) from: the image token under its centre, unfused and fused, and the phrase's
  tokens, unfused and fused. A one-hot of that token's cell is the ceiling the grid allows.

    python bench/fusion_attention_probe.py RUN/stages/vqa/model --data RUN/data [--train 2000 --val 800]

Results: docs/results.md, "Why the comparisons fail: a fused word does not find its object".
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch

import fibervl
from fibervl.modeling.fusion import TextToImageAttentionRecorder


def single_object_phrases(data: Path, split: str, limit: int) -> list[tuple[Path, str, tuple[int, int], list[float]]]:
    """(image, caption, phrase span, box xywh) for phrases that ground exactly one box."""
    coco = json.loads((data / "mdetr_annotations" / f"final_shapes_grounding_{split}.json").read_text())
    images = {i["id"]: i for i in coco["images"]}
    boxes_of = collections.defaultdict(list)
    for a in coco["annotations"]:
        if len(a["tokens_positive"]) == 1:
            boxes_of[(a["image_id"], tuple(a["tokens_positive"][0]))].append(a["bbox"])
    out = []
    for (image_id, span), boxes in boxes_of.items():
        if len(boxes) == 1:
            image = images[image_id]
            out.append((data / "images" / split / image["file_name"], image["caption"], span, boxes[0]))
    return out[:limit]


@torch.no_grad()
def measure(model, processor, items, batch_size: int = 64) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per phrase: features by name ([P, D] each) and the object's centre [P, 2] in [0, 1]."""
    recorder = TextToImageAttentionRecorder(model)
    features, centres = collections.defaultdict(list), []
    for k in range(0, len(items), batch_size):
        chunk = items[k:k + batch_size]
        loaded = [processor.open(str(path)) for path, *_ in chunk]
        pixels = processor.images(loaded).pixels
        text = processor.text([caption for _, caption, _, _ in chunk])
        with recorder, torch.autocast("cpu", dtype=torch.bfloat16):
            fused_text, stages = model.fuse_backbones(pixels, text.input_ids, text.attention_mask)
            fused_image = stages[-1].flatten(1, 2)
            unfused_image = model.unfused_image_tokens(pixels)
            unfused_text = model.unfused_text_tokens(text.input_ids, text.attention_mask)
        rows, cols = stages[-1].shape[1:3]
        for r, ((_, _, (start, end), (x, y, w, h)), image) in enumerate(zip(chunk, loaded)):
            width, height = image.size
            cx, cy = (x + w / 2) / width, (y + h / 2) / height
            centres.append([cx, cy])
            cell = min(int(cy * rows), rows - 1) * cols + min(int(cx * cols), cols - 1)
            tokens = [t for t, (a, b) in enumerate(text.offsets[r]) if b > a and a < end and b > start]
            features["phrase, unfused"].append(unfused_text[r, tokens].float().mean(0))
            features["phrase, fused"].append(fused_text[r, tokens].float().mean(0))
            features["image token at the centre, unfused"].append(unfused_image[r, cell].float())
            features["image token at the centre, fused"].append(fused_image[r, cell].float())
            features["one-hot of that token's cell (ceiling)"].append(torch.nn.functional.one_hot(torch.tensor(cell), rows * cols).float())
            for layer, weights in enumerate(recorder.maps):
                attention = weights[r][:, tokens].mean(1)  # [heads, N]
                features[f"attention {layer}: on the object"].append(attention[:, cell])
                features[f"attention {layer}: largest"].append(attention.max(-1).values)
    return {name: torch.stack(rows_) for name, rows_ in features.items()}, torch.tensor(centres)


def ridge_r2(train_x, train_y, test_x, test_y) -> torch.Tensor:
    """R^2 per target column of a ridge fit (standardised features, penalty = feature count)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a = torch.cat([(train_x - mean) / std, torch.ones(len(train_x), 1)], 1)
    b = torch.cat([(test_x - mean) / std, torch.ones(len(test_x), 1)], 1)
    weights = torch.linalg.solve(a.T @ a + a.shape[1] * torch.eye(a.shape[1]), a.T @ train_y)
    residual = ((b @ weights - test_y) ** 2).sum(0)
    return 1 - residual / ((test_y - test_y.mean(0)) ** 2).sum(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a fused model or run directory (fusion-mode text and image)")
    parser.add_argument("--data", type=Path, required=True, help="the shapes data set (its mdetr_annotations)")
    parser.add_argument("--train", type=int, default=2000, help="training phrases for the ridge fits")
    parser.add_argument("--val", type=int, default=800, help="val phrases scored")
    args = parser.parse_args()
    model, processor = fibervl.load(args.model)
    model.eval()
    train_f, train_c = measure(model, processor, single_object_phrases(args.data, "train", args.train))
    val_f, val_c = measure(model, processor, single_object_phrases(args.data, "val", args.val))
    print(f"{len(train_c)} training and {len(val_c)} val phrases\n")
    print("| text-to-image attention of the phrase (val) | per head |\n| --- | --- |")
    for name, values in val_f.items():
        if name.startswith("attention"):
            print(f"| {name} | {', '.join(f'{v:.3f}' for v in values.mean(0).tolist())} |")
    cells = val_f["one-hot of that token's cell (ceiling)"].shape[1]
    print(f"\nuniform attention: {1 / cells:.3f}\n\n| the object's centre read from | R^2 x | R^2 y |\n| --- | ---: | ---: |")
    for name in val_f:
        if not name.startswith("attention"):
            r2 = ridge_r2(train_f[name], train_c, val_f[name], val_c)
            print(f"| {name} | {r2[0]:.3f} | {r2[1]:.3f} |")


if __name__ == "__main__":
    main()

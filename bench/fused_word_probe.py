"""What the fused text reads from the image: mask one word of a caption, let the fused MLM choose it
among its group (colours, seen shapes, left/right, above/below), once with the caption's own image
and once with another caption's image. The gap is what the image adds.

    python bench/fused_word_probe.py RUN/stages/coarse --data RUN/data [--splits val,test]

Prints, per group, the accuracy with the right image, with another image, and the count of words.
Results: docs/results.md, "Diagnosis: the fused text reads an object's colour from the image".
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch

import fibervl
from fibervl.data.shapes.vocab import COLOR_NAMES, SEEN_SHAPES

GROUPS = {"colour": list(COLOR_NAMES), "shape": list(SEEN_SHAPES),
          "left/right": ["left", "right"], "above/below": ["above", "below"]}


def caption_words(data: Path, splits: list[str]) -> list[tuple[Path, str, str, str]]:
    """(image, caption, group, word) for the first group word after a caption's first word (one
    token there, after a space)."""
    captions = json.loads((data / "captions" / "dataset_shapes.json").read_text())
    out = []
    for image in captions["images"]:
        if image["split"] not in splits:
            continue
        for sentence in image["sentences"]:
            words = sentence["raw"].split()
            for group, members in GROUPS.items():
                hits = [w for w in words[1:] if w in members]
                if hits:
                    out.append((data / "images" / image["split"] / image["filename"], sentence["raw"], group, hits[0]))
    return out


@torch.no_grad()
def accuracy(model, processor, items, other_image: bool, batch_size: int = 32) -> dict[str, list[bool]]:
    tokenizer = processor.tokenizer
    token = {}
    for word in (w for members in GROUPS.values() for w in members):
        pieces = tokenizer.encode(" " + word)[0][1:-1]  # between <s> and </s>
        if len(pieces) != 1:
            raise ValueError(f"{word!r} is {len(pieces)} tokens of {tokenizer.source}: the probe masks one token")
        token[word] = pieces[0]
    right = collections.defaultdict(list)
    for k in range(0, len(items), batch_size):
        chunk = items[k:k + batch_size]
        pixels = processor.images([processor.open(str(path)) for path, *_ in chunk]).pixels
        if other_image:
            pixels = pixels.roll(1, dims=0)
        text = processor.text([caption for _, caption, _, _ in chunk])
        ids = text.input_ids.clone()
        where = []
        for row, (_, _, _, word) in enumerate(chunk):
            position = int((ids[row] == token[word]).nonzero()[0, 0])
            ids[row, position] = tokenizer.mask_token_id
            where.append(position)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats = model.fuse(pixels, ids, text.attention_mask).text_feats.float()
        for row, (_, _, group, word) in enumerate(chunk):
            logits = model.mlm_logits(feats[row, where[row]]).float()
            right[group].append(max(GROUPS[group], key=lambda w: logits[token[w]].item()) == word)
    return right


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a coarse model or run directory (with an MLM head)")
    parser.add_argument("--data", type=Path, required=True, help="the shapes data set the model was trained on")
    parser.add_argument("--splits", default="val,test")
    args = parser.parse_args()
    model, processor = fibervl.load(args.model, task="retrieval")
    model.eval()
    items = caption_words(args.data, args.splits.split(","))
    own, other = accuracy(model, processor, items, False), accuracy(model, processor, items, True)
    print("| group | right image | another image | words |\n| --- | ---: | ---: | ---: |")
    for group in GROUPS:
        if own[group]:
            print(f"| {group} | {100 * sum(own[group]) / len(own[group]):.1f} | "
                  f"{100 * sum(other[group]) / len(other[group]):.1f} | {len(own[group])} |")


if __name__ == "__main__":
    main()

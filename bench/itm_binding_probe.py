"""Does a model's ITM tell a caption from the same words bound otherwise?

    python bench/itm_binding_probe.py RUN/stages/coarse/model --data RUN/data [--split val]

For every caption of the split that allows a word swap (:mod:`fibervl.tasks.word_swaps`, with the
shapes set's groups: colours, shapes, small/large, left/right, above/below), scores (image, caption)
and (image, swapped caption) with the model's ITM head and reports, per group swapped, how often
the true caption scores higher (chance: 50). A fusion that binds each word to its object tells
"a red star left of a blue ring" from "a blue star left of a red ring"; one that reads a bag of
words and regions cannot. Results: docs/results.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import torch

import fibervl
from fibervl.data.shapes.vocab import SWAP_GROUPS
from fibervl.tasks.word_swaps import WordSwapTable

GROUP_NAMES = ["colour", "shape", "size", "left/right", "above/below"]


def split_captions(root: Path, split: str) -> list[tuple[Path, str]]:
    """(image path, caption) of every caption of ``split`` in the set's Karpathy-format file."""
    data = json.loads((root / "captions" / "dataset_shapes.json").read_text())
    return [(root / "images" / image["filepath"] / image["filename"], sentence["raw"])
            for image in data["images"] if image["split"] == split for sentence in image["sentences"]]


@torch.no_grad()
def match_scores(model, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N] ITM log-odds of a match for each (image ``pixels [N, 3, S, S]``, text)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.itm_logits(model.fuse(pixels, ids, mask).cls_feats).float()
    return logits[:, 1] - logits[:, 0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a model directory with an ITM head (RUN/stages/coarse/model)")
    parser.add_argument("--data", type=Path, required=True, help="a shapes data set (RUN/data)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model, processor = fibervl.load(args.model, task="retrieval")
    table = WordSwapTable.from_words([list(g) for g in SWAP_GROUPS], processor.tokenizer)
    rows = split_captions(args.data, args.split)
    wins, counts = collections.Counter(), collections.Counter()
    true_matches = 0
    generator = torch.Generator().manual_seed(0)
    for k in range(0, len(rows), args.batch_size):
        chunk = rows[k:k + args.batch_size]
        text = processor.text([caption for _, caption in chunk])
        swapped, group = table.swap(text.input_ids, text.attention_mask, generator)
        pixels = processor.images([processor.open(str(path)) for path, _ in chunk]).pixels
        true = match_scores(model, pixels, text.input_ids, text.attention_mask)
        true_matches += int((true > 0).sum())
        keep = (group >= 0).nonzero().squeeze(1).tolist()
        if not keep:
            continue
        false = match_scores(model, pixels[keep], swapped[keep], text.attention_mask[keep])
        for i, score in zip(keep, false.tolist()):
            name = GROUP_NAMES[int(group[i])]
            counts[name] += 1
            wins[name] += float(true[i]) > score
    total = sum(counts.values())
    print(f"{args.model}, {args.split}: {len(rows)} captions, {total} with a swap; true captions called a match: "
          f"{100 * true_matches / len(rows):.1f} %")
    print("| swapped | pairs | true caption scores higher (%) |")
    print("| --- | ---: | ---: |")
    for name in GROUP_NAMES:
        if counts[name]:
            print(f"| {name} | {counts[name]} | {100 * wins[name] / counts[name]:.1f} |")
    print(f"| all | {total} | {100 * sum(wins.values()) / max(total, 1):.1f} |")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

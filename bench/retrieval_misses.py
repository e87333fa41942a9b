"""Where ITM re-ranking wins or loses against the dual encoder: each rule's image->text R@1 misses,
and how many of them are captions of another image showing the same objects.

    python bench/retrieval_misses.py RUN/stages/retrieval/model --data RUN/data [--split test] [--k 8] [--itm-weight W]

For every image of a shapes data set's split, three rules pick one caption among the ITC top
``--k``: the cosine (ITC), the ITM log-odds alone, and cosine + W x log-odds (default W: the
model card's, :mod:`fibervl.tasks.retrieval`). A pick is right when the caption is one of the
image's own. A wrong pick is counted as "same objects" when its image shows the same coloured
shapes (the detection annotations' colour and class, as a multiset): such a caption ("an image
with a black cross") may be just as true of the query, and R@1 cannot tell them apart. Ties take
the first candidate, so R@1 may differ from the recall code's, which breaks ties at random.
Results: docs/results.md, session 28.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch

import fibervl
from fibervl.data.shapes import ShapesDataset
from fibervl.tasks import retrieval as R
from fibervl.tasks.gallery import image_prefix_rows, text_prefix_rows, tokenize_gallery


def image_contents(data_root: Path, split: str, paths: list[str]) -> list[tuple | None]:
    """Per image path: the sorted (colour, class) pairs of its annotated objects; None for an
    image the split's detection file does not list."""
    coco = json.loads((data_root / "detection" / f"instances_{split}.json").read_text(encoding="utf-8"))
    names = {c["id"]: c["name"] for c in coco["categories"]}
    image_of_file = {im["file_name"]: im["id"] for im in coco["images"]}
    objects = collections.defaultdict(list)
    for a in coco["annotations"]:
        objects[a["image_id"]].append((a.get("attributes", {}).get("color", ""), names[a["category_id"]]))
    out = []
    for p in paths:
        image_id = image_of_file.get(Path(p).name)
        out.append(None if image_id is None else tuple(sorted(objects[image_id])))
    return out


def pick_counts(candidates: torch.Tensor, scores: torch.Tensor, text_to_image: torch.Tensor,
                contents: list[tuple | None]) -> dict[str, float]:
    """candidates [I, k] text indices, scores [I, k] (higher is better), text_to_image [T] ->
    ``r1`` (%), ``misses``, ``same_objects`` (misses whose caption belongs to an image with the
    same known contents) and ``right_or_same`` (%)."""
    pick = candidates.gather(1, scores.argmax(1, keepdim=True)).squeeze(1)
    owner = text_to_image[pick]
    right = owner == torch.arange(len(owner))
    same = torch.tensor([contents[i] is not None and contents[o] == contents[i] for i, o in enumerate(owner.tolist())])
    n = max(len(owner), 1)
    return {"r1": 100.0 * right.sum().item() / n, "misses": int((~right).sum()),
            "same_objects": int((~right & same).sum()), "right_or_same": 100.0 * (right | same).sum().item() / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--data", required=True, help="a shapes data set (fibervl data shapes)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--itm-weight", type=float, default=None, help="default: the model card's")
    args = parser.parse_args()
    model, processor = fibervl.load(args.model, task="retrieval")
    weight = processor.card.itm_weight if args.itm_weight is None else args.itm_weight
    paths, texts, t2i, _ = ShapesDataset(args.data).captions(args.split).retrieval_lists()
    contents = image_contents(Path(args.data), args.split, [str(p) for p in paths])
    size, length = model.config.vision.image_size, model.config.text.max_text_len
    with torch.no_grad():
        image_embed = R.embed_images(model, paths, size)
        text_embed = R.embed_texts(model, processor.tokenizer, texts, length)
        cosine = image_embed @ text_embed.t()
        ids, mask = tokenize_gallery(processor.tokenizer, texts, length)
        images = image_prefix_rows(model, paths, size, 64, False, None, None)
        text_rows = text_prefix_rows(model, ids, mask, 256, False, None, None)
        candidates = cosine.topk(args.k, dim=1).indices
        pairs = torch.stack([torch.arange(len(paths)).repeat_interleave(args.k), candidates.flatten()], 1)
        itm = R.itm_prefix_pair_scores(model, images, text_rows, mask, pairs, 64, False).view(-1, args.k)
    top_cosine = cosine.gather(1, candidates)
    t2i = torch.tensor(t2i)
    print(f"{len(paths)} images, {len(texts)} captions, ITC top {args.k}")
    print("| pick | R@1 (i2t) | misses | of them, a caption of an image with the same objects | right or same objects |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, scores in (("ITC", top_cosine), ("ITM alone", itm), (f"ITC + {weight:g} x ITM", top_cosine + weight * itm)):
        c = pick_counts(candidates, scores, t2i, contents)
        print(f"| {name} | {c['r1']:.2f} | {c['misses']} | {c['same_objects']} | {c['right_or_same']:.2f} |")


if __name__ == "__main__":
    main()

"""Can a readout of a VQA model's fused features answer the questions its head gets wrong?

    python bench/vqa_readout_probe.py RUN/stages/vqa/model --train-data RUN/data --eval-data RUN/data [--per-template 6000]

Runs the model's fused forward on the training and validation questions of some of the shapes set's
templates (``--templates``: the comparisons and, as controls, colour, shape and size) and trains
small probes on what it computes, frozen, each scored per template on both splits:

- ``cls_feats``: the head's own input (the pooled text and image, after their poolers);
- ``text mean + image max``: the same pooling before the poolers;
- ``text mean + image tokens in place``: the fused image grid flattened, so a token's place is its slot;
- ``relation network``: g(o_i, o_j, q) summed over every pair of fused image tokens (each with its
  grid place), q the question's fused text tokens in place, then f (Santoro et al., 2017).

A probe that fits a template on the training questions but not on val has the information and
generalises poorly; one that cannot fit the training questions means the features do not hold the
answer in a form these readouts can use. Results: docs/results.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import torch
from torch import nn

import fibervl
from fibervl.data.shapes.config import IMAGE_TEMPLATE
from fibervl.data.shapes.layout import ShapesDataset

TEMPLATES = "side,relation,bigger,more,exist_size_shape,shape,color"
TEXT_TOKENS = 16  # the shapes set's questions are at most 15 tokens


def questions(root: Path, split: str, templates: set[str], per_template: int) -> list[tuple[Path, str, str, str]]:
    """(image, question, template, majority answer), at most ``per_template`` of each template."""
    vqa, ext = root / "vqa", ShapesDataset(root).ext
    asked = json.loads((vqa / f"v2_OpenEnded_shapes_{split}_questions.json").read_text())["questions"]
    annotations = json.loads((vqa / f"v2_shapes_{split}_annotations.json").read_text())["annotations"]
    by_id = {a["question_id"]: a for a in annotations}
    out, taken = [], collections.Counter()
    for q in asked:
        a = by_id[q["question_id"]]
        if a.get("template") in templates and taken[a["template"]] < per_template:
            taken[a["template"]] += 1
            image = root / "images" / IMAGE_TEMPLATE.format(split=split, image_id=q["image_id"], ext=ext)
            out.append((image, q["question"], a["template"], a["multiple_choice_answer"]))
    return out


@torch.no_grad()
def fused_features(model, processor, rows, batch_size: int = 128) -> dict[str, torch.Tensor]:
    """``cls`` [N, 2H], ``grid`` [N, P, H] fused image tokens, ``text`` [N, TEXT_TOKENS, H] fused
    text tokens (zero past the question), ``text_mean`` [N, H]."""
    parts = collections.defaultdict(list)
    for k in range(0, len(rows), batch_size):
        chunk = rows[k:k + batch_size]
        pixels = processor.images([processor.open(str(path)) for path, *_ in chunk]).pixels
        text = processor.text([question for _, question, _, _ in chunk])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.fuse(pixels, text.input_ids, text.attention_mask)
        mask = text.attention_mask[..., None].float()
        tokens = out.text_feats.float() * mask
        padded = torch.zeros(len(chunk), TEXT_TOKENS, tokens.shape[-1])
        n = min(TEXT_TOKENS, tokens.shape[1])
        padded[:, :n] = tokens[:, :n]
        parts["cls"].append(out.cls_feats.float())
        parts["grid"].append(out.image_feats.float())
        parts["text"].append(padded)
        parts["text_mean"].append(tokens.sum(1) / mask.sum(1))
    return {k: torch.cat(v) for k, v in parts.items()}


class Standardise(nn.Module):
    """x -> (x - mean) / std with the training features' statistics over ``dims``."""

    def __init__(self, x: torch.Tensor, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", x.mean(dims, keepdim=True)[0])
        self.register_buffer("std", x.std(dims, keepdim=True)[0] + 1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class MlpProbe(nn.Module):
    """[N, D] -> answer logits: one hidden layer of 512, dropout 0.2."""

    def __init__(self, x: torch.Tensor, answers: int) -> None:
        super().__init__()
        self.net = nn.Sequential(Standardise(x, (0,)), nn.Dropout(0.2), nn.Linear(x.shape[1], 512), nn.ReLU(),
                                 nn.Dropout(0.2), nn.Linear(512, answers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class RelationProbe(nn.Module):
    """(grid [N, P, H], text [N, T, H]) -> answer logits: every ordered pair of image tokens, each
    with its (row, column) place in [-1, 1], with the question, through g, summed, through f."""

    def __init__(self, grid: torch.Tensor, text: torch.Tensor, answers: int, width: int = 64, hidden: int = 128) -> None:
        super().__init__()
        side = int(grid.shape[1] ** 0.5)
        rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        self.register_buffer("places", torch.stack([rows, cols], -1).reshape(-1, 2).float() / max(side - 1, 1) * 2 - 1)
        self.grid_norm, self.text_norm = Standardise(grid, (0, 1)), Standardise(text.flatten(1), (0,))
        self.token = nn.Linear(grid.shape[2] + 2, width)
        self.question = nn.Sequential(nn.Linear(text.shape[1] * text.shape[2], hidden), nn.ReLU(), nn.Linear(hidden, width))
        self.g = nn.Sequential(nn.Linear(3 * width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.f = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, answers))

    def forward(self, grid: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b, p, _ = grid.shape
        tokens = self.token(torch.cat([self.grid_norm(grid), self.places.expand(b, p, 2)], -1))  # [B, P, w]
        q = self.question(self.text_norm(text.flatten(1)))[:, None, None, :].expand(b, p, p, -1)
        pairs = torch.cat([tokens[:, :, None].expand(b, p, p, -1), tokens[:, None].expand(b, p, p, -1), q], -1)
        return self.f(self.g(pairs).sum((1, 2)))


def train_probe(probe: nn.Module, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor, steps: int,
                batch_size: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    optimiser = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=1e-2)
    draws = torch.Generator().manual_seed(seed)
    probe.train()
    for _ in range(steps):
        pick = torch.randint(0, len(labels), (batch_size,), generator=draws)
        loss = nn.functional.cross_entropy(probe(*(x[pick] for x in inputs)), labels[pick])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return probe.eval()


@torch.no_grad()
def accuracy_by_template(probe: nn.Module, inputs, labels, templates: list[str]) -> dict[str, float]:
    predicted = torch.cat([probe(*(x[k:k + 1024] for x in inputs)).argmax(1) for k in range(0, len(labels), 1024)])
    right = collections.defaultdict(list)
    for template, ok in zip(templates, (predicted == labels).tolist()):
        right[template].append(ok)
    return {t: 100 * sum(v) / len(v) for t, v in right.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a VQA model directory (RUN/stages/vqa/model)")
    parser.add_argument("--train-data", type=Path, required=True, help="shapes data set whose train split trains the probes")
    parser.add_argument("--eval-data", type=Path, required=True, help="shapes data set whose val split scores them")
    parser.add_argument("--templates", default=TEMPLATES)
    parser.add_argument("--per-template", type=int, default=6000, help="training questions of each template, at most")
    parser.add_argument("--mlp-steps", type=int, default=3000)
    parser.add_argument("--relation-steps", type=int, default=3000)
    args = parser.parse_args()
    start = time.perf_counter()
    model, processor = fibervl.load(args.model, task="vqa")
    model.eval()
    templates = set(args.templates.split(","))
    train = questions(args.train_data, "train", templates, args.per_template)
    val = questions(args.eval_data, "val", templates, 10**9)
    if not train or not val:
        raise SystemExit(f"no questions of templates {sorted(templates)} in the train split of {args.train_data} "
                         f"or the val split of {args.eval_data}")
    answers = {a: i for i, a in enumerate(sorted({row[3] for row in train + val}))}
    labels = {name: torch.tensor([answers[row[3]] for row in rows]) for name, rows in (("train", train), ("val", val))}
    names = {"train": [row[2] for row in train], "val": [row[2] for row in val]}
    feats = {"train": fused_features(model, processor, train), "val": fused_features(model, processor, val)}
    print(f"{len(train)} training and {len(val)} val questions; features in {time.perf_counter() - start:.0f} s", flush=True)

    readouts = {
        "cls_feats": lambda f: (f["cls"],),
        "text mean + image max": lambda f: (torch.cat([f["text_mean"], f["grid"].amax(1)], 1),),
        "text mean + image tokens in place": lambda f: (torch.cat([f["text_mean"], f["grid"].flatten(1)], 1),),
        "relation network": lambda f: (f["grid"], f["text"]),
    }
    order = [t for t in args.templates.split(",") if t in set(names["val"])]
    print("| readout | " + " | ".join(f"{t} (train / val)" for t in order) + " |")
    print("| --- |" + " ---: |" * len(order))
    for name, inputs in readouts.items():
        x_train, x_val = inputs(feats["train"]), inputs(feats["val"])
        if name == "relation network":
            probe, steps, batch = RelationProbe(*x_train, len(answers)), args.relation_steps, 128
        else:
            probe, steps, batch = MlpProbe(x_train[0], len(answers)), args.mlp_steps, 256
        train_probe(probe, x_train, labels["train"], steps, batch)
        fit = accuracy_by_template(probe, x_train, labels["train"], names["train"])
        held = accuracy_by_template(probe, x_val, labels["val"], names["val"])
        print(f"| {name} | " + " | ".join(f"{fit.get(t, float('nan')):.1f} / {held[t]:.1f}" for t in order) + " |",
              flush=True)
    print(f"{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()

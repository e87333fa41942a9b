"""Write a small VQA set that fibervl has never seen, in the VQAv2 layout, to check fine-tuning.

One flat-coloured shape per image on a plain background, drawn here with PIL and nothing of
fibervl's shapes generator: other shapes (rectangle, pentagon, ellipse), other colours (pink,
brown, gray, cyan), other backgrounds, other wording. Four questions per image: "what color is
the shape?", "what shape is in the image?", "is the shape <colour>?" and "is there a <shape> in
the image?" (yes and no equally often), each with ten identical answers.

    python bench/external_vqa.py OUT [--size 224] [--train 4000] [--val 1000]
    fibervl finetune vqa --config configs/fiber-tiny_vqa.yaml --init RUN/stages/coarse/model \
        --train-data vqav2,split=train2014:OUT:OUT --eval-data vqav2,split=val2014:OUT:OUT

The question-type prior is 30.6 % (yes/no 50 %, colour 1 in 10, shape 1 in 8).
Results: docs/results.md, "Fine-tuning on a VQA set it has never seen".
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (220, 20, 20), "green": (20, 170, 40), "blue": (30, 60, 220), "yellow": (240, 220, 20),
          "orange": (250, 140, 0), "purple": (140, 40, 190), "pink": (250, 120, 190), "brown": (130, 80, 30),
          "gray": (128, 128, 128), "cyan": (20, 210, 220)}
SHAPES = ("circle", "square", "triangle", "rectangle", "pentagon", "hexagon", "star", "ellipse")
BACKGROUNDS = ((255, 255, 255), (235, 235, 235), (0, 0, 0), (250, 245, 230))


def polygon(cx: float, cy: float, r: float, corners: int, turn: float, star: bool = False) -> list:
    """The vertices of a regular polygon (or a star of ``corners`` points) around (cx, cy)."""
    n = 2 * corners if star else corners
    radius = [r, r * 0.45] if star else [r]
    return [(cx + radius[i % len(radius)] * math.cos(turn + 2 * math.pi * i / n),
             cy + radius[i % len(radius)] * math.sin(turn + 2 * math.pi * i / n)) for i in range(n)]


def draw(shape: str, color: str, size: int, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (size, size), rng.choice(BACKGROUNDS))
    pen = ImageDraw.Draw(image)
    r = rng.uniform(0.15, 0.35) * size  # 15-35 % of the side: never cut by the border
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    fill = COLORS[color]
    if shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ellipse":
        pen.ellipse([cx - r, cy - 0.55 * r, cx + r, cy + 0.55 * r], fill=fill)
    elif shape == "square":
        pen.rectangle([cx - 0.8 * r, cy - 0.8 * r, cx + 0.8 * r, cy + 0.8 * r], fill=fill)
    elif shape == "rectangle":
        pen.rectangle([cx - r, cy - 0.5 * r, cx + r, cy + 0.5 * r], fill=fill)
    elif shape == "triangle":
        pen.polygon(polygon(cx, cy, r, 3, -math.pi / 2 + rng.uniform(-0.3, 0.3)), fill=fill)
    elif shape == "star":
        pen.polygon(polygon(cx, cy, r, 5, -math.pi / 2, star=True), fill=fill)
    else:
        pen.polygon(polygon(cx, cy, r, 5 if shape == "pentagon" else 6, rng.uniform(0, 2 * math.pi)), fill=fill)
    return image


def questions(shape: str, color: str, rng: random.Random) -> list[tuple[str, str, str]]:
    """(question, answer, answer type) x 4."""
    other_color = rng.choice([c for c in COLORS if c != color])
    other_shape = rng.choice([s for s in SHAPES if s != shape])
    asked_color, asked_shape = rng.choice([color, other_color]), rng.choice([shape, other_shape])
    return [("what color is the shape?", color, "other"),
            ("what shape is in the image?", shape, "other"),
            (f"is the shape {asked_color}?", "yes" if asked_color == color else "no", "yes/no"),
            (f"is there a {asked_shape} in the image?", "yes" if asked_shape == shape else "no", "yes/no")]


def write_split(root: Path, split: str, n: int, seed: int, size: int) -> None:
    """``root/split/COCO_{split}_{id:012d}.jpg`` and VQAv2's two json files for ``split``."""
    rng = random.Random(seed)
    (root / split).mkdir(parents=True, exist_ok=True)
    qs, anns = [], []
    for i in range(n):
        image_id = seed * 1_000_000 + i
        shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
        draw(shape, color, size, rng).save(root / split / f"COCO_{split}_{image_id:012d}.jpg", quality=92)
        for j, (question, answer, answer_type) in enumerate(questions(shape, color, rng)):
            qid = image_id * 10 + j
            qs.append({"image_id": image_id, "question": question, "question_id": qid})
            anns.append({"image_id": image_id, "question_id": qid, "answer_type": answer_type,
                         "question_type": " ".join(question.split()[:2]), "multiple_choice_answer": answer,
                         "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": k + 1}
                                     for k in range(10)]})
    head = {"data_type": "mscoco", "data_subtype": split}
    (root / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(
        json.dumps({**head, "task_type": "Open-Ended", "questions": qs}))
    (root / f"v2_mscoco_{split}_annotations.json").write_text(json.dumps({**head, "annotations": anns}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--train", type=int, default=4000, help="training images (4 questions each)")
    parser.add_argument("--val", type=int, default=1000, help="validation images")
    args = parser.parse_args()
    write_split(args.out, "train2014", args.train, 1, args.size)
    write_split(args.out, "val2014", args.val, 2, args.size)
    print(f"wrote {4 * args.train} training and {4 * args.val} validation questions to {args.out}")


if __name__ == "__main__":
    main()

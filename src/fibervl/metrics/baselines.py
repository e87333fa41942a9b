"""Baselines: what a predictor that does not look (a prior, a random guess, a constant answer)
scores on the items a task evaluates. A model must beat them to show that it uses the image.

Every baseline of every task is computed here, from the data and the metrics alone (no model,
no engine), over exactly the items the evaluation scores:

* VQA: *chance* (a uniformly random training answer, also within the question's answer type),
  *majority*, and two *text-only priors*, the most common training answer per question prefix
  (the template's first words) and per exact question text (falling back to the prefix), scored
  with VQAv2's accuracy;
* NLVR2: chance 50 %, the majority training label, and the majority label per statement prefix
  (first four words) and per exact statement;
* referring expressions, *random object*: the chance of picking the target among the image's
  objects; phrase grounding, *random object*: the expected R@1 of picking one of the image's
  objects at random (a phrase is found when the pick overlaps any of its boxes with IoU >= 0.5);
* phrase grounding and referring expressions, *chance*: R@1 of one random box per phrase, not
  knowing the objects (reported beside the random-object baseline, in the details);
* detection, *chance*: COCO AP of random boxes (sizes drawn from the training boxes, uniform
  positions, classes and scores), averaged over a few seeds;
* retrieval, *chance*: the expected recall of random scores (:func:`chance_recall`);
* captioning: the most frequent training caption for every image, and the best constant caption
  (:func:`best_constant_caption_baseline`).

The shapes generator writes the VQA, NLVR2 and REC baselines of whole splits to
``DIR/baselines.json`` (:func:`compute_baselines`); the main job recomputes them on the records
it evaluates (:func:`evaluated_baselines`).
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from pathlib import Path

import torch

from ..boxes import box_iou
from ..data.shapes import ShapesDataset
from .caption import caption_scores, constant_caption_cider
from .detection import coco_ap
from .vqa import mean_vqa_accuracy, vqa_accuracy


# ---------------------------------------------------------------------- VQA, NLVR2, REC priors
def _chance_accuracy(answers: list[str], vocab: list[str]) -> float:
    """Expected accuracy of a uniformly random answer from ``vocab``."""
    return mean_vqa_accuracy(vocab, answers)


def _mean(xs) -> float:
    xs = list(xs)
    return round(100.0 * sum(xs) / len(xs), 2) if xs else float("nan")


def _majority(counter: Counter) -> str:
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def _prefix(text: str, n: int) -> str:
    return " ".join(text.split()[:n])


def vqa_baselines(train, evals) -> dict:
    """``train`` and ``evals``: VqaReaders (or any lists of VQA Samples)."""
    best = lambda s: s.meta["multiple_choice_answer"]  # noqa: E731
    all_answers = Counter(best(s) for s in train)
    by_type: dict[str, Counter] = defaultdict(Counter)
    by_question: dict[str, Counter] = defaultdict(Counter)
    for s in train:
        by_type[s.question_type][best(s)] += 1
        by_question[s.text][best(s)] += 1
    majority = _majority(all_answers)
    vocab = sorted(all_answers)
    out = {"questions": len(evals), "answer_vocabulary": len(vocab)}
    groups = {"all": list(evals)}
    for s in evals:
        groups.setdefault(s.answer_type, []).append(s)
    type_vocab: dict[str, list[str]] = defaultdict(set)
    for s in train:
        type_vocab[s.answer_type].add(best(s))
    type_vocab = {t: sorted(v) for t, v in type_vocab.items()}
    for name, samples in groups.items():
        out[name] = {
            "chance": _mean(_chance_accuracy(s.answers, vocab) for s in samples),
            # A guesser that knows the answer type (yes/no, number, other) from the question.
            "chance_within_type": _mean(_chance_accuracy(s.answers, type_vocab.get(s.answer_type, vocab)) for s in samples),
            "majority": _mean(vqa_accuracy(majority, s.answers) for s in samples),
            "prefix_prior": _mean(
                vqa_accuracy(_majority(by_type[s.question_type]) if s.question_type in by_type else majority, s.answers)
                for s in samples),
            "text_only_prior": _mean(
                vqa_accuracy(_majority(by_question[s.text]) if s.text in by_question else
                             (_majority(by_type[s.question_type]) if s.question_type in by_type else majority), s.answers)
                for s in samples),
            "count": len(samples),
        }
    return out


def nlvr2_baselines(train, evals) -> dict:
    """``train`` and ``evals``: Nlvr2Readers (or any lists of NLVR2 Samples)."""
    overall = Counter(s.label for s in train)
    by_prefix: dict[str, Counter] = defaultdict(Counter)
    by_text: dict[str, Counter] = defaultdict(Counter)
    for s in train:
        by_prefix[_prefix(s.text, 4)][s.label] += 1
        by_text[s.text][s.label] += 1
    maj = _majority(overall)

    def prior(s):
        if s.text in by_text:
            return _majority(by_text[s.text])
        return _majority(by_prefix[_prefix(s.text, 4)]) if _prefix(s.text, 4) in by_prefix else maj

    return {
        "items": len(evals),
        "true_fraction": _mean(s.label for s in evals),
        "chance": 50.0,
        "majority": _mean(s.label == maj for s in evals),
        "prefix_prior": _mean(s.label == (_majority(by_prefix[_prefix(s.text, 4)]) if _prefix(s.text, 4) in by_prefix else maj)
                              for s in evals),
        "text_only_prior": _mean(s.label == prior(s) for s in evals),
    }


def refexp_baselines(ref) -> dict:
    """Chance of hitting the target by choosing one of the image's objects at random."""
    return {"expressions": len(ref), "random_object": _mean(1.0 / s.meta["num_objects"] for s in ref)}


BASELINE_TASKS = ("vqa", "nlvr2", "refexp")


def compute_baselines(root: str | Path, splits: tuple[str, ...] = ("val", "test"),
                      tasks: tuple[str, ...] = BASELINE_TASKS, limit: int = 0) -> dict:
    """Baselines per split and task, over the first ``limit`` records of each split (0: all).
    The generator writes every task's, on whole splits, to ``DIR/baselines.json``; the main job
    asks for the records its evaluations score."""
    unknown = sorted(set(tasks) - set(BASELINE_TASKS))
    if unknown:
        raise ValueError(f"no baselines for task(s) {unknown}; known: {list(BASELINE_TASKS)}")
    ds = ShapesDataset(root)
    readers = {"vqa": ds.vqa, "nlvr2": ds.nlvr2, "refexp": ds.refexp}
    train = {t: readers[t]("train") for t in tasks if t != "refexp"}  # read once for every split
    makers = {"vqa": lambda evals: vqa_baselines(train["vqa"], evals),
              "nlvr2": lambda evals: nlvr2_baselines(train["nlvr2"], evals),
              "refexp": refexp_baselines}

    def records(task: str, split: str):
        reader = readers[task](split)
        return list(reader)[:limit] if limit else reader

    return {split: {t: makers[t](records(t, split)) for t in tasks} for split in splits}


# ---------------------------------------------------------------------- main-job baselines
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


# ---------------------------------------------------------------------- retrieval, captioning
def chance_recall(n_images: int, n_texts: int, captions_per_image: float, k: int = 1) -> dict[str, float]:
    """Expected R@k of random scores (the chance baseline)."""
    c = captions_per_image
    # i2t: probability that at least one of c positives lands in the top k of n_texts.
    miss = 1.0
    for j in range(k):
        miss *= max(0.0, (n_texts - c - j) / (n_texts - j))
    return {f"i2t_r{k}": 100.0 * (1 - miss), f"t2i_r{k}": 100.0 * min(1.0, k / n_images)}


def _caption_counts(reader) -> Counter:
    """How often each caption occurs in ``reader`` (every caption of every image)."""
    return Counter(c for img in reader.images for c in img["captions"])


def most_frequent_caption_baseline(train_reader, eval_reader, limit: int = 0, spice: bool = False) -> dict:
    """Scores of predicting the most frequent training caption for every evaluation image: what
    a model that ignores the image can reach with one fixed answer."""
    best = _caption_counts(train_reader).most_common(1)[0][0]
    images = eval_reader.images[:limit] if limit else eval_reader.images
    metrics = caption_scores({img["image_id"]: best for img in images},
                             {img["image_id"]: img["captions"] for img in images}, spice=spice)
    metrics["caption"] = best
    return metrics


def best_constant_caption_baseline(train_reader, eval_reader, limit: int = 0, candidates: int = 50) -> dict:
    """The best a captioner that ignores the image can do with one sentence: of the
    ``candidates`` most frequent training captions, the one whose CIDEr is highest when given
    for every evaluation image (chosen on the evaluation references themselves, so an upper
    bound of constant captions). A model must beat it to show that its captions use the image.
    Returns ``{"caption", "cider"}``."""
    counts = _caption_counts(train_reader)
    pool = sorted(counts, key=lambda c: (-counts[c], c))[:candidates]
    images = eval_reader.images[:limit] if limit else eval_reader.images
    scores = constant_caption_cider(pool, {img["image_id"]: img["captions"] for img in images})
    best = max(range(len(pool)), key=lambda i: scores[i])
    return {"caption": pool[best], "cider": scores[best]}

"""The VQAv2 accuracy metric (the official ``vqaEval.py`` rules) and the server results format.

The answer normalisation (steps 1-4 of the official evaluator) and the score of an answer given
by k annotators are :func:`fibervl.data.answers.normalize_answer` and
:func:`~fibervl.data.answers.answer_score`, shared with the answer vocabulary.

Accuracy of one prediction against the annotators' answers (:func:`vqa_accuracy`): the mean,
over the 10 leave-one-out subsets of 9 annotators, of ``min(#matches / 3, 1)``. As in the
official evaluator, steps 2-4 are applied (to the prediction and the answers) only when the
annotators disagree; when they all gave the same string the comparison is case-insensitive
exact match after step 1.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from ..data.answers import answer_score, clean_answer, normalize_answer


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """VQAv2 accuracy in [0, 1] of one predicted answer against the annotators' ``answers``."""
    return mean_vqa_accuracy([prediction], answers)


@functools.lru_cache(maxsize=65536)
def _prediction_keys(prediction: str) -> tuple[str, str]:
    """A prediction as it is compared: (when the annotators agree, when they disagree)."""
    pred = clean_answer(prediction)
    return pred.lower(), normalize_answer(pred).lower()


def mean_vqa_accuracy(predictions: Sequence[str], answers: list[str]) -> float:
    """Mean of :func:`vqa_accuracy` of each of ``predictions`` against one question's ``answers``
    (e.g. the expected accuracy of an answer drawn at random from a vocabulary), normalising the
    annotators' answers once instead of once per prediction."""
    if not predictions:
        raise ValueError("mean_vqa_accuracy needs at least one prediction")
    gts = [clean_answer(a) for a in answers]
    agree = len(set(gts)) <= 1
    if not agree:
        gts = [normalize_answer(a) for a in gts]
    counts = Counter(g.lower() for g in gts)
    side = 0 if agree else 1
    total = sum(answer_score(counts.get(_prediction_keys(p)[side], 0), len(gts)) for p in predictions)
    return total / len(predictions)


def vqa_score(predictions: dict, samples: Iterable) -> dict[str, float]:
    """Accuracy in percent, overall and per answer type.

    predictions: question id (``Sample.sample_id``) -> answer string; samples: VQA Samples with
    ``answers`` (and optionally ``answer_type``). Every sample must have a prediction.
    """
    per_type: dict[str, list[float]] = {}
    scores = []
    for s in samples:
        if s.sample_id not in predictions:
            raise KeyError(f"no prediction for question {s.sample_id}")
        acc = vqa_accuracy(predictions[s.sample_id], s.answers)
        scores.append(acc)
        if s.answer_type:
            per_type.setdefault(s.answer_type, []).append(acc)
    if not scores:
        raise ValueError("no questions to score")
    out = {"vqa_acc": 100.0 * sum(scores) / len(scores), "questions": len(scores)}
    for t, xs in sorted(per_type.items()):
        out[f"vqa_acc_{t.replace('/', '_')}"] = 100.0 * sum(xs) / len(xs)
    return out


def write_vqa_results(predictions: dict, path: str | Path) -> Path:
    """The evaluation server's format: ``[{"question_id": int, "answer": str}, ...]``."""
    rows = [{"question_id": int(q), "answer": a} for q, a in predictions.items()]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows) + "\n", encoding="utf-8")
    return path

"""VQA answers as classification targets: normalisation, vocabulary, soft scores.

Scores follow VQAv2's accuracy: an answer given by k of 10 annotators is worth
min(1, k / 3) averaged over the leave-one-out subsets, i.e. 0.3, 0.6, 0.9, 1.0 for k = 1..4+
(the soft targets of ViLT / FIBER's VQA head). The metric itself lives in fibervl.metrics.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable

import torch

from ..metrics.vqa import accuracy_from_count, normalize_vqa_answer


def normalize_answer(answer: str) -> str:
    """VQAv2's answer normalisation (punctuation, number words, articles, contractions): the key
    of the vocabulary. One implementation: :func:`fibervl.metrics.vqa.normalize_vqa_answer`."""
    return normalize_vqa_answer(answer)


def answer_score(count: int, total: int = 10) -> float:
    """VQA accuracy of an answer that ``count`` of ``total`` annotators gave."""
    return accuracy_from_count(count, total)


class AnswerVocabulary:
    """Answer <-> index, built from training answers.

    ``AnswerVocabulary.build(train_reader, min_count=9)`` keeps answers given (normalised) at
    least ``min_count`` times over all annotators, most frequent first (VQAv2 practice gives
    about 3k answers).
    """

    def __init__(self, answers: list[str]):
        if len(set(answers)) != len(answers):
            raise ValueError("answer vocabulary has duplicates")
        self.answers = list(answers)
        self.index = {a: i for i, a in enumerate(self.answers)}

    @classmethod
    def build(cls, samples: Iterable, min_count: int = 1, max_size: int | None = None) -> "AnswerVocabulary":
        counts = Counter(normalize_answer(a) for s in samples for a in s.answers)
        ranked = sorted((a for a, c in counts.items() if c >= min_count and a), key=lambda a: (-counts[a], a))
        if not ranked:
            raise ValueError("no answers to build a vocabulary from (are these VQA samples with answers?)")
        return cls(ranked[:max_size] if max_size else ranked)

    def __len__(self) -> int:
        return len(self.answers)

    def __contains__(self, answer: str) -> bool:
        return normalize_answer(answer) in self.index

    def targets(self, answers: list[str]) -> torch.Tensor:
        """[len(self)] float32 soft scores; answers outside the vocabulary contribute nothing."""
        out = torch.zeros(len(self.answers), dtype=torch.float32)
        counts = Counter(normalize_answer(a) for a in answers)
        for a, c in counts.items():
            if a in self.index:
                out[self.index[a]] = answer_score(c, len(answers))
        return out

    def batch_targets(self, batch_answers: list[list[str]]) -> torch.Tensor:
        """[B, len(self)] soft scores for a batch (``Batch.answers``)."""
        if not batch_answers:
            return torch.zeros((0, len(self.answers)), dtype=torch.float32)
        return torch.stack([self.targets(a) for a in batch_answers])

    def decode(self, indices: torch.Tensor | Iterable[int]) -> list[str]:
        return [self.answers[int(i)] for i in indices]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.answers, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "AnswerVocabulary":
        return cls(json.loads(Path(path).read_text(encoding="utf-8")))

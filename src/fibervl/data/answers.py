"""VQA answers: the official normalisation, the answer vocabulary, soft scores.

Normalisation (:func:`normalize_answer`, the official ``vqaEval.py`` rules, in their order):

1. newlines / tabs -> spaces, strip (:func:`clean_answer`);
2. punctuation ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !``: removed when it touches a space
   (or the text has a digit,digit comma), otherwise replaced by a space; a period not followed by
   a digit is removed (so "3.5" survives, "five." does not);
3. lower case; number words none/zero..ten -> digits; articles a/an/the dropped;
4. the official contractions table (``dont`` -> ``don't``, ...).

Scores follow VQAv2's accuracy (:func:`answer_score`): an answer given by k of 10 annotators is
worth min(1, k / 3) averaged over the leave-one-out subsets, i.e. 0.3, 0.6, 0.9, 1.0 for
k = 1..4+ (the soft targets of ViLT / FIBER's VQA head). Both live here, with the data, because
the vocabulary and the targets need them; the metric (:mod:`fibervl.metrics.vqa`) imports them.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

import torch

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
# The official pattern, kept verbatim: its "(?!<=\d)" is a look-ahead that always holds, so the
# rule is "a period not followed by a digit".
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")


def clean_answer(text: str) -> str:
    """Step 1 alone: newlines and tabs to spaces, stripped (what the official evaluator compares
    when the annotators all gave the same string)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def _punctuation(text: str) -> str:
    out = text
    digit_comma = _DIGIT_COMMA.search(text) is not None
    for p in _PUNCT:
        if p + " " in text or " " + p in text or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def _digits_articles(text: str) -> str:
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """All normalisation steps 1-4: the key of the answer vocabulary, and what the VQA metric
    compares when the annotators disagree."""
    return _digits_articles(_punctuation(clean_answer(answer)))


def answer_score(matches: int, total: int = 10) -> float:
    """VQA accuracy of an answer that ``matches`` of ``total`` annotators gave: the mean over the
    ``total`` leave-one-out subsets of min(#matches in the subset / 3, 1) (0.3, 0.6, 0.9, 1.0 for
    1..4 of 10): ``matches`` subsets lose one match, the other ``total - matches`` keep them all."""
    if total <= 0:
        return 0.0
    if total == 1:
        return float(matches >= 1)
    return (matches * min(1.0, (matches - 1) / 3.0) + (total - matches) * min(1.0, matches / 3.0)) / total


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

"""The VQAv2 accuracy metric (the official ``vqaEval.py`` rules) and the server results format.

Normalisation (:func:`normalize_vqa_answer`), in the official order:

1. newlines / tabs -> spaces, strip;
2. punctuation ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !``: removed when it touches a space
   (or the text has a digit,digit comma), otherwise replaced by a space; a period not followed by
   a digit is removed (so "3.5" survives, "five." does not);
3. lower case; number words none/zero..ten -> digits; articles a/an/the dropped;
4. the official contractions table (``dont`` -> ``don't``, ...).

Accuracy of one prediction against the annotators' answers (:func:`vqa_accuracy`): the mean,
over the 10 leave-one-out subsets of 9 annotators, of ``min(#matches / 3, 1)``. As in the
official evaluator, steps 2-4 are applied (to the prediction and the answers) only when the
annotators disagree; when they all gave the same string the comparison is case-insensitive
exact match after step 1.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

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


def _clean(text: str) -> str:
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


def normalize_vqa_answer(answer: str) -> str:
    """All normalisation steps 1-4 (also the key of the answer vocabulary)."""
    return _digits_articles(_punctuation(_clean(answer)))


def accuracy_from_count(matches: int, total: int) -> float:
    """Mean over the ``total`` leave-one-out subsets of min(#matches in the subset / 3, 1) when
    ``matches`` of the ``total`` annotators gave the answer (0.3, 0.6, 0.9, 1.0 for 1..4 of 10):
    ``matches`` subsets lose one match, the other ``total - matches`` keep them all."""
    if total <= 0:
        return 0.0
    if total == 1:
        return float(matches >= 1)
    return (matches * min(1.0, (matches - 1) / 3.0) + (total - matches) * min(1.0, matches / 3.0)) / total


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """VQAv2 accuracy in [0, 1] of one predicted answer against the annotators' ``answers``."""
    return mean_vqa_accuracy([prediction], answers)


@functools.lru_cache(maxsize=65536)
def _prediction_keys(prediction: str) -> tuple[str, str]:
    """A prediction as it is compared: (when the annotators agree, when they disagree)."""
    pred = _clean(prediction)
    return pred.lower(), normalize_vqa_answer(pred).lower()


def mean_vqa_accuracy(predictions: Sequence[str], answers: list[str]) -> float:
    """Mean of :func:`vqa_accuracy` of each of ``predictions`` against one question's ``answers``
    (e.g. the expected accuracy of an answer drawn at random from a vocabulary), normalising the
    annotators' answers once instead of once per prediction."""
    if not predictions:
        raise ValueError("mean_vqa_accuracy needs at least one prediction")
    gts = [_clean(a) for a in answers]
    agree = len(set(gts)) <= 1
    if not agree:
        gts = [normalize_vqa_answer(a) for a in gts]
    counts = Counter(g.lower() for g in gts)
    side = 0 if agree else 1
    total = sum(accuracy_from_count(counts.get(_prediction_keys(p)[side], 0), len(gts)) for p in predictions)
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

"""Baselines a model must beat on the shapes set, computed from the written files.

VQA accuracy is VQAv2's: an answer scores min(#annotators who gave it / 3, 1), averaged
over the 10 leave-one-out subsets of the 10 answers.
- chance:     expected accuracy of an answer drawn uniformly from the train answer set;
              chance_within_type draws from the train answers of the question's answer type.
- majority:   the single most common train answer, for every question.
- prefix:     the most common train answer per question type (the template's first words).
- question:   the most common train answer per exact question text (falls back to prefix);
              the strongest text-only prior here, and the one the README calls "text-only".
NLVR2: chance 50 %, the majority train label, and the majority label per template prefix
(first four words of the statement) and per exact statement.
Referring expressions: choosing a random object of the image (chance at IoU 0.5).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from ...metrics.vqa import mean_vqa_accuracy, vqa_accuracy
from .layout import ShapesDataset


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

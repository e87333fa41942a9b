"""VQA accuracy by question form: which kinds of question a model gets wrong.

    fibervl evaluate vqa --model RUN/stages/vqa/model --data-root RUN/data --split test --results answers.json
    python bench/vqa_breakdown.py RUN/data/vqa/v2_shapes_test_annotations.json answers.json [--by template]

Reads a VQAv2 annotation file and a results file (``[{"question_id", "answer"}, ...]``, what
``--results`` writes) and prints the VQAv2 accuracy (:func:`fibervl.metrics.vqa.vqa_accuracy`, the
official rules) per value of an annotation field: ``template`` (the shapes set's
question maker), ``question_type`` (VQAv2's first words) or ``answer_type``. Worst first.
Results: docs/results.md, "Diagnosis: VQA by question form".
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from fibervl.metrics.vqa import vqa_accuracy


def breakdown(annotations: list[dict], answers: dict[int, str], by: str) -> dict[str, tuple[float, int]]:
    """{field value: (VQAv2 accuracy in %, questions)} over the annotated questions answered."""
    scores: dict[str, list[float]] = collections.defaultdict(list)
    for a in annotations:
        if a["question_id"] not in answers:
            continue
        if by not in a:
            raise ValueError(f"annotation of question {a['question_id']} has no field {by!r}")
        scores[str(a[by])].append(vqa_accuracy(answers[a["question_id"]], [x["answer"] for x in a["answers"]]))
    return {k: (100 * sum(v) / len(v), len(v)) for k, v in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("annotations", type=Path, help="v2_<source>_<split>_annotations.json")
    parser.add_argument("results", type=Path, help="the answers: fibervl evaluate vqa --results FILE")
    parser.add_argument("--by", default="template", help="template | question_type | answer_type")
    args = parser.parse_args()
    annotations = json.loads(args.annotations.read_text(encoding="utf-8"))["annotations"]
    answers = {int(r["question_id"]): r["answer"] for r in json.loads(args.results.read_text(encoding="utf-8"))}
    rows = breakdown(annotations, answers, args.by)
    if not rows:
        raise SystemExit(f"no question of {args.results} is annotated in {args.annotations}")
    print(f"| {args.by} | questions | accuracy |\n| --- | ---: | ---: |")
    for key, (accuracy, n) in sorted(rows.items(), key=lambda kv: kv[1][0]):
        print(f"| {key} | {n} | {accuracy:.1f} |")


if __name__ == "__main__":
    main()

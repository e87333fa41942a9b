"""VQAv2: ``v2_OpenEnded_mscoco_{split}_questions.json`` + ``v2_mscoco_{split}_annotations.json``.

Splits are VQAv2's data subtypes (train2014, val2014, test2015, test-dev2015); test splits
have no annotation file. Images are found with a template relative to ``image_root``:
VQAv2's default is ``{split}/COCO_{split}_{image_id:012d}.jpg`` (with split = "train2014",
i.e. ``train2014/COCO_train2014_000000000123.jpg``); the shapes set uses
``{split}/shapes_{split}_{image_id:012d}.jpg``. test-dev2015 is a subset of test2015's
questions on test2015's images, so its template is filled with ``split = "test2015"``. A
train2014 / val2014 image missing from its 2014 place is taken from COCO 2017's folders
(``train2017/000000000123.jpg`` or ``val2017/...``), which hold the same images renamed.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from ..samples import Sample, most_common_answer
from .common import DEFAULT_MAX_TEXT_CHARS, Reader, check_format, check_text, coco_image, load_json, require

VQAV2_IMAGE_TEMPLATE = "{split}/COCO_{split}_{image_id:012d}.jpg"
ANSWER_TYPES = ("yes/no", "number", "other")
# splits whose images are another split's: {questions split: images split}
IMAGE_SPLITS = {"test-dev2015": "test2015"}
# image splits COCO 2017 also holds (renamed, in train2017/ and val2017/)
COCO_2014_SPLITS = ("train2014", "val2014")


def format_image_path(image_root: Path, template: str, file: Path, record: object, **fields) -> Path:
    try:
        return image_root / template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise DataError(file, f"image template {template!r} cannot be filled from {sorted(fields)}: {exc}", record) from None


def _by_question_id(records: list, file: Path, what: str = "") -> tuple[dict[int, list[int]], list[DataError]]:
    """{question_id: indices of the records with it}, and the errors of records with no usable id."""
    by_qid: dict[int, list[int]] = {}
    bad = []
    for n, record in enumerate(records):
        try:
            by_qid.setdefault(require(record, "question_id", file, f"{what}{n}", int), []).append(n)
        except DataError as err:
            bad.append(err)
    return by_qid, bad


class VqaReader(Reader):
    """One Sample per question: text = question, answers = the annotators' answers.

    root:        directory with the question/annotation files.
    split:       data subtype used in the file names and the image template.
    source:      the name in the files, "mscoco" for VQAv2, "shapes" for the shapes set.
    image_root:  where the images are (default: root).
    annotations: False for test splits (no answers), True to require them.

    Questions and annotations are paired by ``question_id``. The unit skipped is the pair: a
    question without an annotation, an annotation without a question, and an id given to
    more than one question or annotation (which answers would be right?) are bad records.
    """

    def __init__(self, root: str | Path, split: str, source: str = "mscoco", image_root: str | Path | None = None,
                 image_template: str = VQAV2_IMAGE_TEMPLATE, annotations: bool = True,
                 questions_file: str | Path | None = None, annotations_file: str | Path | None = None,
                 skip_bad: bool = False, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS):
        super().__init__(skip_bad, max_text_chars)
        root = Path(root)
        self.split = split
        self._coco_images: dict[int, Path] = {}  # image id -> its file, where the 2014 name is missing
        self.questions_file = Path(questions_file or root / f"v2_OpenEnded_{source}_{split}_questions.json")
        self.annotations_file = Path(annotations_file or root / f"v2_{source}_{split}_annotations.json") if annotations else None
        image_root = Path(image_root) if image_root is not None else root
        questions = require(load_json(self.questions_file), "questions", self.questions_file, None, list)
        check_format(questions, "question", self.questions_file, "a VQAv2 questions file")
        q_ids, bad = _by_question_id(questions, self.questions_file)
        anns: list = []
        a_ids: dict[int, list[int]] = {}
        if self.annotations_file is not None:
            anns = require(load_json(self.annotations_file), "annotations", self.annotations_file, None, list)
            check_format(anns, "answers", self.annotations_file, "a VQAv2 annotations file")
            a_ids, a_bad = _by_question_id(anns, self.annotations_file, "annotation ")
            bad += a_bad
        for err in bad:
            self._bad(err)
        for qid, ns in q_ids.items():
            try:
                a_n = self._partner(qid, ns, a_ids)
                ann = anns[a_n] if a_n is not None else None
                self._add(ns[0], questions[ns[0]], a_n, ann, image_root, image_template, dataset=source)
            except DataError as err:
                self._bad(err)
        for qid, ns in a_ids.items():
            if qid not in q_ids:
                self._bad(DataError(self.annotations_file, f"annotation of question_id {qid} has no question in "
                                                           f"{self.questions_file.name}", f"annotation {ns[0]}"))

    def _partner(self, qid: int, q_ns: list[int], a_ids: dict[int, list[int]]) -> int | None:
        """The index of the one annotation of question ``qid`` (None without an annotation file)."""
        rid = f"{q_ns[0]} (question_id {qid})"
        if len(q_ns) > 1:
            raise DataError(self.questions_file, f"duplicate question_id {qid} (records {_listed(q_ns)})", rid)
        if self.annotations_file is None:
            return None
        a_ns = a_ids.get(qid, [])
        if not a_ns:
            raise DataError(self.annotations_file, f"no annotation for question_id {qid}", rid)
        if len(a_ns) > 1:
            raise DataError(self.annotations_file, f"duplicate question_id {qid} (records {_listed(a_ns)})",
                            f"annotation {a_ns[0]}")
        return a_ns[0]

    def _add(self, n, q, a_n, ann, image_root, template, dataset):
        f = self.questions_file
        qid = require(q, "question_id", f, n, int)
        rid = f"{n} (question_id {qid})"
        image_id = require(q, "image_id", f, rid, int)
        text, cut = check_text(require(q, "question", f, rid), f, rid, self.max_text_chars, what="question")
        self.truncated += cut
        image_split = IMAGE_SPLITS.get(self.split, self.split)
        path = format_image_path(image_root, template, f, rid, split=image_split, image_id=image_id)
        if dataset == "mscoco" and image_split in COCO_2014_SPLITS:  # or in COCO 2017's folders, renamed
            if image_id not in self._coco_images:  # several questions per image: look once
                self._coco_images[image_id] = coco_image(path, image_root, image_id)
            path = self._coco_images[image_id]
        sample = Sample(sample_id=str(qid), image_id=image_id, text=text, dataset=dataset, image_path=path)
        if ann is not None:
            af = self.annotations_file
            rid = f"annotation {a_n} (question_id {qid})"
            if ann.get("image_id", image_id) != image_id:
                raise DataError(af, f"image_id {ann.get('image_id')} differs from the question's {image_id}", rid)
            answers = []
            for k, a in enumerate(require(ann, "answers", af, rid, list)):
                ans = require(a, "answer", af, f"{rid} answer {k}", str)
                answers.append(ans)
            if not answers:
                raise DataError(af, "no answers", rid)
            sample.answers = answers
            sample.answer_type = ann.get("answer_type")
            if sample.answer_type is not None and sample.answer_type not in ANSWER_TYPES:
                raise DataError(af, f"unknown answer_type {sample.answer_type!r} (expected one of {ANSWER_TYPES})", rid)
            sample.question_type = ann.get("question_type")
            sample.meta["multiple_choice_answer"] = ann.get("multiple_choice_answer") or most_common_answer(answers)
            if "template" in ann:
                sample.meta["template"] = ann["template"]
        self.samples.append(sample)


def _listed(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:-1])) + f" and {numbers[-1]}"

"""What a converted official VQA checkpoint needs beside its weights: the answer list in the
order of the official classifier's rows, and the tokenizer.

The official code (``coarse_grained/fiber/utils/write_vqa.py``) numbers the answers while it
writes its VQAv2 arrow files: every ``multiple_choice_answer`` of the train2014 annotations,
then of the val2014 annotations, normalised (``normalize_word``: VQAv2's punctuation, number
word and article rules), counted, and kept when given at least 9 times, in the order each answer
first occurs (3,129 answers). Row ``i`` of ``vqa_classifier`` scores ``label2ans[i]``. No file of
that list ships with the checkpoints, so :func:`official_answer_list` rebuilds it from the same
annotation files; a saved list (a JSON list, or an ``{"answer": index}`` object) is read as it is.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..data.answers import AnswerVocabulary, normalize_answer
from .common import ConversionError

ANSWERS_FILE = "answers.json"  # what `fibervl evaluate|predict vqa` read from a model directory
TOKENIZER_DIR = "tokenizer"
OFFICIAL_MIN_COUNT = 9


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConversionError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConversionError(f"{path}: not a readable JSON file ({err})") from None


def official_answer_list(annotation_files: list[str | Path], min_count: int = OFFICIAL_MIN_COUNT) -> list[str]:
    """The official ``label2ans`` from VQAv2 annotation files given in the official order
    (``v2_mscoco_train2014_annotations.json``, then ``v2_mscoco_val2014_annotations.json``)."""
    answers: list[str] = []
    for file in map(Path, annotation_files):
        data = _read_json(file)
        records = data.get("annotations") if isinstance(data, dict) else None
        if not isinstance(records, list):
            raise ConversionError(f"{file}: not a VQAv2 annotation file (no 'annotations' list)")
        for k, record in enumerate(records):
            answer = record.get("multiple_choice_answer") if isinstance(record, dict) else None
            if not isinstance(answer, str):
                raise ConversionError(f"{file}: annotation {k} has no 'multiple_choice_answer' string")
            answers.append(normalize_answer(answer))
    counts = Counter(answers)  # keeps first-occurrence order, as the official dict comprehension does
    return [a for a, c in counts.items() if c >= min_count]


def read_answer_list(path: str | Path) -> list[str]:
    """A saved answer list: a JSON list (row order), or an ``{"answer": row}`` object."""
    path = Path(path)
    data = _read_json(path)
    if isinstance(data, list) and all(isinstance(a, str) for a in data):
        return data
    if isinstance(data, dict) and data and all(isinstance(i, int) for i in data.values()):
        rows = sorted(data.values())
        if rows != list(range(len(rows))):
            raise ConversionError(f"{path}: the answer indices are not 0..{len(rows) - 1} each once")
        return [a for a, _ in sorted(data.items(), key=lambda item: item[1])]
    raise ConversionError(f"{path}: expected a JSON list of answers or an {{answer: index}} object")


def answer_list_from_files(files: list[str | Path]) -> list[str]:
    """``files``: VQAv2 annotation files (the official list is rebuilt from them) or one saved
    answer list."""
    first = _read_json(Path(files[0]))
    if isinstance(first, dict) and "annotations" in first:
        return official_answer_list(files)
    if len(files) != 1:
        raise ConversionError(f"{files[0]} is an answer list, not a VQAv2 annotation file: give it alone")
    return read_answer_list(files[0])


def check_vqa_files(model, answers: list[str] | None = None, tokenizer_dir: str | Path | None = None):
    """Check ``answers`` against the model's VQA head and the tokenizer in ``tokenizer_dir``
    against its vocabulary; returns the tokenizer (or None). Raises :class:`ConversionError`."""
    from ..data.tokenizer import Tokenizer

    config = model.config
    if answers is not None:
        if "vqa" not in config.heads:
            raise ConversionError("answers were given, but the converted model has no VQA head")
        if len(answers) != config.vqa_num_answers:
            raise ConversionError(f"the answer list has {len(answers)} answers, but the checkpoint's VQA classifier "
                                  f"has {config.vqa_num_answers} rows: it was trained with another list")
        AnswerVocabulary(answers)  # duplicates are an error
    if tokenizer_dir is None:
        return None
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    if tokenizer.vocab_size != config.text.vocab_size:
        raise ConversionError(f"the tokenizer in {tokenizer_dir} has {tokenizer.vocab_size} tokens, the model's "
                              f"text embeddings {config.text.vocab_size}: not the model's tokenizer")
    return tokenizer


def write_vqa_files(directory: str | Path, answers: list[str] | None = None, tokenizer=None) -> None:
    """``directory/answers.json`` and ``directory/tokenizer/`` (what :func:`check_vqa_files` accepted)."""
    directory = Path(directory)
    if answers is not None:
        AnswerVocabulary(answers).save(directory / ANSWERS_FILE)
    if tokenizer is not None:
        tokenizer.save(directory / TOKENIZER_DIR)

"""The sample dataclass: the contract between readers, transforms and tasks.

One class serves every task so that transforms and collate work on all of them; a reader
fills the fields its format has and leaves the rest at their empty defaults:

===================  ==========================================================================
task                 fields filled
===================  ==========================================================================
captions/retrieval   image_path, text (one caption), captions (all captions of the image)
VQA                  image_path, text (question), answers (10), answer_type, question_type
NLVR2                image_path (left), image2_path (right), text (statement), label
grounding / refexp   image_path, text, boxes, tokens_positive (per box), category_ids
detection            image_path, boxes, category_ids (text built later from category names)
===================  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

Span = tuple[int, int]


def _empty_boxes() -> torch.Tensor:
    return torch.zeros((0, 4), dtype=torch.float32)


def _empty_ids() -> torch.Tensor:
    return torch.zeros((0,), dtype=torch.int64)


@dataclass
class Sample:
    """One example.

    sample_id:       unique id within its reader (question id, annotation id, identifier, ...).
    image_id:        id of the (first) image.
    image_path:      file of the (first) image; ``image`` holds it once loaded (PIL, RGB).
    width, height:   the image size the annotations refer to (None when the format has none).
    text:            caption, question, referring expression or statement.
    boxes:           [N, 4] float32, xyxy in absolute pixels of ``image``.
    category_ids:    [N] int64 category id per box (-1 for a phrase box with no category).
    tokens_positive: N lists of (start, end) character spans of ``text`` naming each box.
    answers:         the annotators' answers (VQAv2: 10), raw strings.
    answer_type:     VQAv2 answer type ("yes/no", "number", "other").
    question_type:   the question's template family (e.g. "what color is the").
    label:           NLVR2 truth value of the statement.
    image2_path:     NLVR2 right image; ``image2`` once loaded.
    captions:        every reference caption of the image (retrieval and caption metrics).
    dataset:         name of the source set ("coco", "vqav2", "shapes", ...).
    meta:            anything else of the record a task may want (kept verbatim).
    """

    sample_id: str
    image_id: int | str
    image_path: Path | None = None
    image: Image.Image | None = None
    width: int | None = None
    height: int | None = None
    text: str = ""
    boxes: torch.Tensor = field(default_factory=_empty_boxes)
    category_ids: torch.Tensor = field(default_factory=_empty_ids)
    tokens_positive: list[list[Span]] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    answer_type: str | None = None
    question_type: str | None = None
    label: bool | None = None
    image2_path: Path | None = None
    image2: Image.Image | None = None
    captions: list[str] = field(default_factory=list)
    dataset: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])

    def check(self) -> None:
        """Raise ValueError if the fields contradict each other (shapes, spans)."""
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"sample {self.sample_id}: boxes must be [N, 4], got {tuple(self.boxes.shape)}")
        n = self.num_boxes
        if self.category_ids.shape != (n,):
            raise ValueError(f"sample {self.sample_id}: {n} boxes but category_ids of shape {tuple(self.category_ids.shape)}")
        if self.tokens_positive and len(self.tokens_positive) != n:
            raise ValueError(f"sample {self.sample_id}: {n} boxes but {len(self.tokens_positive)} tokens_positive lists")
        for spans in self.tokens_positive:
            for start, end in spans:
                if not 0 <= start < end <= len(self.text):
                    raise ValueError(
                        f"sample {self.sample_id}: span ({start}, {end}) is outside the text of length {len(self.text)}"
                    )


def most_common_answer(answers: list[str]) -> str:
    """The answer given most often (ties: the first given), as VQAv2's multiple_choice_answer."""
    if not answers:
        raise ValueError("no answers")
    counts: dict[str, int] = {}
    for a in answers:
        counts[a] = counts.get(a, 0) + 1
    return max(counts, key=lambda a: counts[a])  # dicts keep insertion order: ties -> first

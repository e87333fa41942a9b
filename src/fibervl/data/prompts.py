"""Detection as grounding: class names become a text prompt with one span per class."""

from __future__ import annotations

import re
from dataclasses import replace

from .samples import Sample, Span


def clean_name(name: str) -> str:
    """FIBER / GLIP cleaning: drop parenthesised parts, "_" -> space, squeeze spaces."""
    name = re.sub(r"\(.*?\)", "", name).replace("_", " ")
    return " ".join(name.split()).lower()


def detection_prompt(names: list[str], separator: str = ". ") -> tuple[str, list[Span]]:
    """["traffic_light", "dog"] -> ("traffic light. dog", [(0, 13), (15, 18)])."""
    text, spans = "", []
    for k, name in enumerate(names):
        clean = clean_name(name)
        if not clean:
            raise ValueError(f"category name {name!r} is empty after cleaning")
        if k:
            text += separator
        spans.append((len(text), len(text) + len(clean)))
        text += clean
    return text, spans


def detection_to_grounding(sample: Sample, categories: dict[int, str], category_ids: list[int] | None = None) -> Sample:
    """Give a detection sample the prompt of ``category_ids`` (default: all, in id order) and
    each box the span of its class name. Boxes of classes not in the prompt are dropped (the
    caller chose to leave those classes out, e.g. a chunk of LVIS names)."""
    ids = sorted(categories) if category_ids is None else list(category_ids)
    text, spans = detection_prompt([categories[i] for i in ids])
    span_of = dict(zip(ids, spans))
    keep = [i for i, c in enumerate(sample.category_ids.tolist()) if c in span_of]
    return replace(
        sample, text=text, boxes=sample.boxes[keep], category_ids=sample.category_ids[keep],
        tokens_positive=[[span_of[int(sample.category_ids[i])]] for i in keep],
        meta={**sample.meta, "prompt_category_ids": ids},
    )

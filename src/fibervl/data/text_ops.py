"""Text edits that keep character spans (tokens_positive) pointing at the same words."""

from __future__ import annotations

import re

from .samples import Span

_SIDE_WORDS = re.compile(r"\b(left|right|Left|Right|LEFT|RIGHT)(most)?\b")
_SWAP = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT", "RIGHT": "LEFT"}


def swap_left_right(text: str) -> tuple[str, list[tuple[int, int, int]]]:
    """"the star on the left" -> "the star on the right" (also leftmost/rightmost).

    Returns the new text and the edits as (old_start, old_end, new_length) for
    :func:`remap_span`. Words merely containing the letters ("bright") are left alone.
    """
    edits, pieces, last = [], [], 0
    for m in _SIDE_WORDS.finditer(text):
        new = _SWAP[m.group(1)] + (m.group(2) or "")
        pieces.append(text[last:m.start()])
        pieces.append(new)
        edits.append((m.start(), m.end(), len(new)))
        last = m.end()
    pieces.append(text[last:])
    return "".join(pieces), edits


def remap_position(pos: int, edits: list[tuple[int, int, int]], is_end: bool) -> int:
    """Where character position ``pos`` of the old text lies in the edited text."""
    shift = 0
    for start, end, new_len in edits:
        if pos >= end:
            shift += new_len - (end - start)
        elif pos > start:  # inside an edited word: snap to the word's new boundary
            return start + shift + (new_len if is_end else 0)
        else:
            break
    return pos + shift


def remap_span(span: Span, edits: list[tuple[int, int, int]]) -> Span:
    return (remap_position(span[0], edits, False), remap_position(span[1], edits, True))


def swap_answer_left_right(answer: str) -> str:
    return swap_left_right(answer)[0]

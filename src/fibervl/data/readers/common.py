"""Shared pieces of the readers: JSON loading, key checks, text checks, the base class."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import DataError, SkipLog, handle
from ..samples import Sample

# Longer texts are cut (plain text) or refused (texts with character spans): no caption of
# any real data set comes close, so this only catches broken records.
DEFAULT_MAX_TEXT_CHARS = 2000


def load_json(path: str | Path) -> Any:
    """Parse a JSON file; DataError naming the file and the line on failure."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "annotation file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text: {exc}") from None


def require(record: Any, key: str, file: Path, record_id: object, kind: type | tuple = object) -> Any:
    """``record[key]``, checked for presence and type."""
    if not isinstance(record, dict):
        raise DataError(file, f"record is a {type(record).__name__}, not an object", record_id)
    if key not in record:
        raise DataError(file, f"missing key {key!r}", record_id)
    value = record[key]
    if kind is not object and not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(file, f"key {key!r} should be {names}, got {type(value).__name__}", record_id)
    return value


def require_size(record: Any, key: str, file: Path, record_id: object) -> int:
    """A positive image dimension; MDETR's Flickr files store some as strings ("334")."""
    value = require(record, key, file, record_id)
    if isinstance(value, bool) or not isinstance(value, (int, str, float)):
        raise DataError(file, f"key {key!r} should be a positive integer, got {value!r}", record_id)
    try:
        number = int(value)
    except ValueError:
        raise DataError(file, f"key {key!r} should be a positive integer, got {value!r}", record_id) from None
    if number <= 0 or number != float(value):
        raise DataError(file, f"key {key!r} should be a positive integer, got {value!r}", record_id)
    return number


def check_text(text: Any, file: Path, record_id: object, max_chars: int, what: str = "caption",
               truncate: bool = True) -> tuple[str, bool]:
    """Validate a text: a non-empty string. Returns (text, was_truncated).

    Texts over ``max_chars`` are cut at the last space before the limit when ``truncate``,
    otherwise refused (texts whose character spans are annotated cannot be cut blindly).
    """
    if not isinstance(text, str):
        raise DataError(file, f"{what} is a {type(text).__name__}, not a string", record_id)
    if not text.strip():
        raise DataError(file, f"empty {what}", record_id)
    if len(text) > max_chars:
        if not truncate:
            raise DataError(file, f"{what} too long: {len(text)} characters > {max_chars}", record_id)
        cut = text[:max_chars]
        space = cut.rfind(" ")
        return (cut[:space] if space > max_chars // 2 else cut), True
    return text, False


class Reader(Sequence[Sample]):
    """A parsed annotation file: an indexable list of :class:`Sample`.

    ``skip_bad=False`` (default): the first bad record raises :class:`DataError`.
    ``skip_bad=True``: bad records are left out and counted in ``self.skipped``.
    ``self.truncated`` counts texts cut to ``max_text_chars``.
    Images are not opened here (see ``fibervl.data.processor.load_images``).
    """

    def __init__(self, skip_bad: bool = False, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS):
        self.skip_bad = skip_bad
        self.max_text_chars = max_text_chars
        self.skipped = SkipLog()
        self.truncated = 0
        self.samples: list[Sample] = []

    def _bad(self, error: DataError) -> None:
        handle(error, self.skip_bad, self.skipped)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):  # type: ignore[override]
        return self.samples[i]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples, {self.skipped.summary()})"

"""Shared pieces of the readers: JSON loading, key checks, text checks, the base class."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import DataError, SkipLog, handle, skipping_on
from ..samples import Sample

# Longer texts are cut (plain text) or refused (texts with character spans): no caption of
# any real data set comes close, so this only catches broken records.
DEFAULT_MAX_TEXT_CHARS = 2000


def load_json(path: str | Path) -> Any:
    """Parse a JSON file; DataError naming the file and the line on failure. A UTF-8 byte
    order mark (which Windows editors write) is accepted."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "annotation file not found")
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text: {exc}") from None


def check_format(records: list, key: str, file: Path, what: str) -> None:
    """A file of another format given by mistake (a detection file where captions are
    expected) is one error naming it, not every record skipped as bad: some record of a file
    of the right kind has ``key``."""
    if records and not any(isinstance(r, dict) and key in r for r in records):
        first = records[0]
        has = sorted(first) if isinstance(first, dict) else f"a {type(first).__name__}"
        raise DataError(file, f"no record has a {key!r} key (the first has {has}): not {what}")


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


# COCO 2017 holds the 2014 train and val images, renamed to their id and split differently
COCO_2017_FOLDERS = ("train2017", "val2017")


def coco_image(path: Path, image_root: Path, image_id: Any) -> Path:
    """``path`` (a 2014 name: ``coco/val2014/COCO_val2014_000000391895.jpg``) when it is there;
    else the same image in COCO 2017's layout under ``image_root``
    (``coco/train2017/000000391895.jpg`` or ``coco/val2017/...``) when that is there; else ``path``
    (a missing image is reported when it is loaded)."""
    if isinstance(image_id, int) and not isinstance(image_id, bool) and not path.is_file():
        for folder in COCO_2017_FOLDERS:
            moved = image_root / folder / f"{image_id:012d}.jpg"
            if moved.is_file():
                return moved
    return path


class Reader(Sequence[Sample]):
    """A parsed annotation file: an indexable list of :class:`Sample`.

    ``skip_bad=False`` (default): the first bad record raises :class:`DataError`.
    ``skip_bad=True``: bad records are left out, counted in ``self.skipped`` and warned about
    (see :class:`~fibervl.data.errors.SkipReport`).
    ``self.truncated`` counts texts cut to ``max_text_chars``.
    Images are not opened here (see ``fibervl.data.processor.load_images``).
    """

    def __init__(self, skip_bad: bool = False, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS):
        self.skip_bad = skip_bad
        self.max_text_chars = max_text_chars
        self.skipped = SkipLog()
        self.truncated = 0
        self.samples: list[Sample] = []
        if skip_bad:
            skipping_on()

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


class CaptionReader(Reader):
    """A captions file: one Sample per (image, caption) pair, and ``self.images``, one entry
    per image kept, ``{"image_id", "image_path", "captions"}`` (its good captions only)."""

    def __init__(self, skip_bad: bool = False, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS):
        super().__init__(skip_bad, max_text_chars)
        self.images: list[dict] = []

    def _add_image(self, image_id: Any, path: Path, captions: list[tuple[str, str]], dataset: str) -> None:
        """Keep an image with its ``(sample_id, caption)`` pairs."""
        texts = [text for _, text in captions]
        self.images.append({"image_id": image_id, "image_path": path, "captions": texts})
        for sample_id, text in captions:
            self.samples.append(Sample(sample_id=sample_id, image_id=image_id, image_path=path, text=text,
                                       captions=texts, dataset=dataset))

    def retrieval_lists(self) -> tuple[list[Path], list[str], list[int], list[list[int]]]:
        """The split as retrieval evaluation wants it.

        Returns (image_paths [I], texts [T], text_to_image [T] index into image_paths,
        image_to_texts [I] lists of indices into texts).
        """
        paths, texts, t2i, i2t = [], [], [], []
        for i, img in enumerate(self.images):
            paths.append(img["image_path"])
            i2t.append([])
            for caption in img["captions"]:
                i2t[-1].append(len(texts))
                t2i.append(i)
                texts.append(caption)
        return paths, texts, t2i, i2t

"""Webdataset tar shards of image-text pairs (CC3M, CC12M, LAION, the shapes train split).

A shard is a plain tar; the members of one sample share a key (the name up to the first
dot): ``000123.jpg`` (or ``.jpeg``, ``.png``, ``.webp``), ``000123.txt`` (the caption),
optionally ``000123.json``. img2dataset writes the caption into the ``.json`` too
(``{"caption": ..., "url": ..., "key": ...}``), and some exports keep it there only: a sample
without a ``.txt`` takes the ``.json``'s ``caption``. Shards are named with brace ranges, e.g.
``cc3m/{00000..00331}.tar``, expanded here.
"""

from __future__ import annotations

import glob
import json
import re
import tarfile
from pathlib import Path
from typing import Iterator

from ..errors import DataError, SkipLog, handle, skipping_on
from ..image_io import decode_image
from ..samples import Sample
from .common import DEFAULT_MAX_TEXT_CHARS, check_text

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTENSIONS = ("txt", "caption")


def expand_shards(pattern: str | Path | list) -> list[Path]:
    """``a/{000..002}.tar`` -> [a/000.tar, a/001.tar, a/002.tar]; globs and lists also work."""
    if isinstance(pattern, (list, tuple)):
        return [p for item in pattern for p in expand_shards(item)]
    pattern = str(pattern)
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if m:
        lo, hi, width = int(m.group(1)), int(m.group(2)), len(m.group(1))
        return [p for i in range(lo, hi + 1)
                for p in expand_shards(pattern[: m.start()] + f"{i:0{width}d}" + pattern[m.end():])]
    if any(ch in pattern for ch in "*?["):
        found = sorted(Path(p) for p in glob.glob(pattern))
        if not found:
            raise DataError(pattern, "no shard matches this pattern")
        return found
    return [Path(pattern)]


class WebDatasetReader:
    """Iterate Samples (image decoded, text = caption) over tar shards, in order.

    Streaming, not indexable: web-scale sets do not fit a list. Samples missing their image
    or caption, or whose image does not decode, raise DataError, or are skipped and counted
    in ``self.skipped`` when ``skip_bad``.
    """

    def __init__(self, shards: str | Path | list, skip_bad: bool = False,
                 max_text_chars: int = DEFAULT_MAX_TEXT_CHARS, decode: bool = True):
        self.shards = expand_shards(shards)
        self.skip_bad, self.max_text_chars, self.decode = skip_bad, max_text_chars, decode
        self.skipped = SkipLog()
        self.truncated = 0
        if skip_bad:
            skipping_on()

    def __iter__(self) -> Iterator[Sample]:
        for shard in self.shards:
            yield from self._iter_shard(shard)

    def _iter_shard(self, shard: Path) -> Iterator[Sample]:
        try:
            tar = tarfile.open(shard, "r")
        except FileNotFoundError:
            raise DataError(shard, "shard not found") from None
        except (tarfile.TarError, OSError) as exc:
            raise DataError(shard, f"not a readable tar file: {exc}") from None
        with tar:
            key, members = None, {}
            try:
                for info in tar:
                    if not info.isfile():
                        continue
                    name = info.name.rsplit("/", 1)[-1]
                    k, _, ext = name.partition(".")
                    if key is not None and k != key:
                        sample = self._make(shard, key, members)
                        if sample is not None:
                            yield sample
                        members = {}
                    key = k
                    members[ext.lower()] = tar.extractfile(info).read()
            except (tarfile.TarError, OSError, EOFError) as exc:
                handle(DataError(shard, f"truncated or corrupt tar: {exc}", key), self.skip_bad, self.skipped)
            if key is not None and members:
                sample = self._make(shard, key, members)
                if sample is not None:
                    yield sample

    def _make(self, shard: Path, key: str, members: dict[str, bytes]) -> Sample | None:
        try:
            image_ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
            if image_ext is None:
                raise DataError(shard, f"sample has no image member (has {sorted(members)})", key)
            meta = {}
            if "json" in members:
                try:
                    meta = json.loads(members["json"])
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise DataError(shard, f"invalid JSON member: {exc}", key) from None
            text, cut = check_text(self._caption(shard, key, members, meta), shard, key, self.max_text_chars)
            self.truncated += cut
            image = decode_image(members[image_ext], f"{shard}:{key}.{image_ext}", record=key) if self.decode else None
            caps = meta.get("captions", [text]) if isinstance(meta, dict) else [text]
            return Sample(sample_id=key, image_id=meta.get("image_id", key) if isinstance(meta, dict) else key,
                          image=image, text=text, captions=caps, dataset="webdataset",
                          meta={"shard": str(shard), "image_bytes": None if self.decode else members[image_ext]})
        except DataError as err:
            handle(err, self.skip_bad, self.skipped)
            return None

    @staticmethod
    def _caption(shard: Path, key: str, members: dict[str, bytes], meta: object) -> str:
        """The caption of a sample: its ``.txt`` (or ``.caption``) member, else the
        ``caption`` field of its ``.json`` member (img2dataset's metadata)."""
        text_ext = next((e for e in TEXT_EXTENSIONS if e in members), None)
        if text_ext is not None:
            try:
                return members[text_ext].decode("utf-8-sig").strip()  # a byte order mark is not part of the caption
            except UnicodeDecodeError:
                raise DataError(shard, "caption is not UTF-8", key) from None
        caption = meta.get("caption") if isinstance(meta, dict) else None
        if isinstance(caption, str):
            return caption.strip()
        raise DataError(shard, f"sample has no caption member (has {sorted(members)}; "
                               "a caption is a .txt member or the 'caption' of a .json member)", key)

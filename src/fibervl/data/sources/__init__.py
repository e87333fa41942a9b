"""One way to name data: sources (``FORMAT:ANNOTATIONS[:IMAGES][@WEIGHT]``), the registry of
formats, weighted mixtures, and ``fibervl data check``.

    source = parse_spec("coco:coco/annotations/instances_val2017.json:coco/val2017")
    reader = open_source(source, "detection", split="val")          # a CocoDetectionReader
    train = training_data([a, b], "captions", "train", processor)   # mixed by weight

Recipes read every data set through :func:`training_reader` / :func:`training_data` (the
training sources, mixed) and :func:`open_source` (the evaluation source), so the embedded
shapes set is one source among the others.
"""

from __future__ import annotations

from typing import Sequence

from ...errors import ConfigError
from ..dataset import ProcessedDataset
from .formats import FORMATS, KINDS, Format, check_kind, check_paths, format_of, open_source, source_splits
from .mix import MixedStream, Mixture, mix
from .spec import DataSource, as_source, format_spec, parse_spec

__all__ = [
    "FORMATS", "KINDS", "DataSource", "Format", "MixedStream", "Mixture", "as_source", "check_kind", "check_paths",
    "format_of", "format_spec", "mix", "open_eval", "open_source", "parse_spec", "source_splits", "training_data",
    "training_reader",
]


def _refuse_stream(source: DataSource, what: str) -> None:
    if format_of(source).stream:
        raise ConfigError(f"data source {source}: a stream cannot be indexed, which {what or 'this task'} needs; "
                          "streams are for pre-training (pretrain coarse|albef|vlmo)")


def training_reader(sources: Sequence[DataSource], kind: str, split: str, skip_bad: bool = False, seed: int = 0,
                    what: str = ""):
    """The training samples of ``sources`` (indexable; streams refused), mixed by weight
    (:func:`mix`: one source of weight 1 is its own reader)."""
    if not sources:
        raise ConfigError(f"no training data for {what or 'this task'}")
    for s in sources:
        _refuse_stream(s, what)
    readers = [open_source(s, kind, split, skip_bad, what) for s in sources]
    return mix(readers, [s.weight for s in sources], seed)


def training_data(sources: Sequence[DataSource], kind: str, split: str, processor, skip_bad: bool = False,
                  seed: int = 0, what: str = ""):
    """The processed training set: a :class:`ProcessedDataset` over :func:`training_reader`, or
    a :class:`MixedStream` when a source is a stream."""
    if not any(format_of(s).stream for s in sources):
        return ProcessedDataset(training_reader(sources, kind, split, skip_bad, seed, what), processor)
    readers = [open_source(s, kind, split, skip_bad, what) for s in sources]
    return MixedStream(readers, [s.weight for s in sources], processor, seed=seed)


def open_eval(source: DataSource, kind: str, split: str, skip_bad: bool = False, what: str = ""):
    """The evaluation reader of ``source`` (indexable: a stream is refused)."""
    _refuse_stream(source, what)
    return open_source(source, kind, split, skip_bad, what)

"""A data source: one data set in one format, named the same way on the command line and in YAML.

On the command line a source is a SPEC::

    FORMAT[,KEY=VALUE...]:ANNOTATIONS[:IMAGES][@WEIGHT]

    mdetr:mdetr_annotations/final_flickr_separateGT_train.json:flickr30k/images
    coco:coco/annotations/instances_val2017.json:coco/val2017
    vqav2,split=val2014:vqav2:coco
    webdataset:shards/{000000..000999}.tar@2

In YAML it is a mapping with the same fields (``{format: coco, annotations: ..., images: ...,
weight: 2}``) or the SPEC string itself. Options (``split``, ``image_template``, ...) go after
the format, where no path can be, so paths keep any character but a colon; a colon inside
``{...}`` (``{image_id:012d}``) does not separate. ``{split}`` in ANNOTATIONS or IMAGES is
replaced by the split being read, so that one source serves training and evaluation
(``coco:coco/annotations/instances_{split}.json:coco/{split}``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from ...errors import ConfigError

FEW_SHOT_FORMATS = ("odinw",)
_WEIGHT = re.compile(r"@((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)$")


@dataclass
class DataSource:
    """One data set.

    ``format``: how it is stored (see :data:`fibervl.data.sources.FORMATS`); ``annotations``:
    the annotation file, folder or shard pattern; ``images``: the folder image paths are
    relative to (default: the format's own, usually the annotations' folder); ``weight``: in a
    mixture of training sources, the number of times each of its samples is seen per epoch (the
    official ``*_COPY`` settings; 0.5 = a fixed half of them); in a mixture with a stream, the
    share of draws. Format options: ``split`` (the split to read; default: the split the recipe
    asks for, ``data.train_split`` / ``data.eval_split``), ``image_template`` (VQAv2: where an
    image id's file is, default ``{split}/COCO_{split}_{image_id:012d}.jpg``), ``image_ext``
    (NLVR2: the image files' extension, default ``.png``), ``shots`` and ``seed`` (ODinW: only
    the images of the GLIP / FIBER k-shot training set of ``shots`` per class drawn with
    ``seed``, :func:`fibervl.data.readers.odinw.few_shot_image_ids`; 0 shots: every image).
    """

    format: str = "shapes"
    annotations: str = ""
    images: str = ""
    weight: float = 1.0
    split: str = ""
    image_template: str = ""
    image_ext: str = ""
    shots: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        from .formats import FORMATS

        if self.format not in FORMATS:
            raise ConfigError(f"data source {self}: unknown format {self.format!r}; known: {', '.join(FORMATS)}")
        if not self.weight >= 0:  # also refuses NaN
            raise ConfigError(f"data source {self}: weight must be >= 0, got {self.weight}")
        if self.shots < 0:
            raise ConfigError(f"data source {self}: shots must be >= 0, got {self.shots}")
        # a k-shot set is drawn from a Roboflow export's images; elsewhere the option would be ignored
        if (self.shots or self.seed) and self.format not in FEW_SHOT_FORMATS:
            raise ConfigError(f"data source {self}: shots and seed are options of the "
                              f"{', '.join(FEW_SHOT_FORMATS)} format, not of {self.format}")
        if self.seed and not self.shots:
            raise ConfigError(f"data source {self}: seed draws a k-shot set; give shots=K too")

    @classmethod
    def from_config_string(cls, text: str) -> "DataSource":
        """A SPEC in a config (see :mod:`fibervl.engine.config`)."""
        return parse_spec(text)

    def path(self, field: str, split: str) -> str:
        """``annotations`` or ``images`` with ``{split}`` filled in."""
        return getattr(self, field).replace("{split}", split)

    def __str__(self) -> str:
        return format_spec(self)


OPTIONS = tuple(f.name for f in dataclasses.fields(DataSource) if f.name not in ("format", "annotations", "images"))
_WHOLE_NUMBERS = ("shots", "seed")


def split_outside_braces(text: str, sep: str) -> list[str]:
    """``text`` split at each ``sep`` that is not inside ``{...}``."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(0, depth - 1)
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_spec(spec: str) -> DataSource:
    """``FORMAT[,KEY=VALUE...]:ANNOTATIONS[:IMAGES][@WEIGHT]`` -> :class:`DataSource`
    (see the module docstring). ``shapes`` alone is the embedded set at ``data/shapes``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"data source {spec!r}: expected FORMAT:ANNOTATIONS[:IMAGES]")
    text = spec.strip()
    fields: dict[str, object] = {}
    m = _WEIGHT.search(text)
    if m:
        fields["weight"] = float(m.group(1))
        text = text[: m.start()]
    head, *paths = split_outside_braces(text, ":")
    fmt, *options = split_outside_braces(head, ",")
    if len(paths) > 2:
        raise ConfigError(f"data source {spec!r}: too many ':' (expected FORMAT:ANNOTATIONS[:IMAGES]; "
                          "a path cannot hold a ':')")
    for option in options:
        key, eq, value = option.partition("=")
        key = key.strip()
        if not eq or key not in OPTIONS:
            raise ConfigError(f"data source {spec!r}: unknown option {option!r} (options: "
                              f"{', '.join(k + '=...' for k in OPTIONS)})")
        if key in _WHOLE_NUMBERS:
            if not value.strip().isdigit():
                raise ConfigError(f"data source {spec!r}: {key} must be a whole number >= 0, got {value!r}")
            fields[key] = int(value)
        else:
            fields[key] = float(value) if key == "weight" and _is_number(value) else value
    if fmt.strip() == "shapes" and not paths:
        paths = ["data/shapes"]
    if not paths or not paths[0]:
        raise ConfigError(f"data source {spec!r}: no annotations (expected FORMAT:ANNOTATIONS[:IMAGES])")
    try:
        return DataSource(format=fmt.strip(), annotations=paths[0], images=paths[1] if len(paths) > 1 else "",
                          **fields)
    except TypeError as exc:  # a weight that is not a number
        raise ConfigError(f"data source {spec!r}: {exc}") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def format_spec(source: DataSource) -> str:
    """The SPEC of ``source`` (what :func:`parse_spec` reads back)."""
    head = source.format + "".join(f",{k}={getattr(source, k)}" for k in OPTIONS
                                   if k != "weight" and getattr(source, k))
    text = f"{head}:{source.annotations}" + (f":{source.images}" if source.images else "")
    return text + (f"@{source.weight:g}" if source.weight != 1 else "")


def as_source(value: DataSource | str | dict) -> DataSource:
    """A config value (a SPEC string, a mapping or a DataSource) as a :class:`DataSource`."""
    if isinstance(value, DataSource):
        return value
    if isinstance(value, str):
        return parse_spec(value)
    if isinstance(value, dict):
        from ...engine.config import from_dict

        return from_dict(DataSource, value, prefix="data source")
    raise ConfigError(f"a data source is FORMAT:ANNOTATIONS[:IMAGES] or a mapping, got {value!r}")

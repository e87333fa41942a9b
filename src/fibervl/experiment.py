"""What every stage and task shares: which model, which data, which tokenizer.

Experiment configs (YAML + ``key=value`` overrides, loaded with :mod:`fibervl.engine.config`)
embed :class:`ModelSpec` and :class:`DataSpec`; :meth:`ModelSpec.build` hands the model part to
:func:`fibervl.modeling.factory.create_model`, with the run's tokenizer so that a preset and a
data set's own vocabulary fit together.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from .data import Tokenizer
from .data.sources import FORMATS, DataSource, as_source
from .errors import ConfigError
from .modeling.factory import LoadReport, create_model, read_model_config, resolve_model_dir
from .modeling.protocol import VisionLanguageModel


@dataclass
class ModelSpec:
    """What :meth:`build` makes (through :func:`fibervl.modeling.factory.create_model`).

    ``preset``: a preset name or a model directory (its config.json: the architecture only);
    ``init``: a model or run directory (``save_pretrained`` output, e.g. an earlier stage's
    ``model/``) whose weights start the run. ``heads``: override the preset's heads (empty:
    keep). ``seed``: the seed of every weight initialised here rather than loaded (a fresh
    model, a new head), so that two runs of one config start from the same weights; it leaves
    the process's random streams as they were.
    ``freeze_prefix``: train only what lies above the first fused block
    (:meth:`FiberModel.freeze_prefix`), for fine-tuning a pre-trained model cheaply.
    ``tuning``: what a grounding detector trains, one of the official modes ``full``,
    ``linear_prob``, ``language_prompt_v1`` .. ``_v4`` (:mod:`fibervl.modeling.detection.tuning`).
    ``activation_checkpointing``: recompute activations in the backward pass (backbone blocks,
    text layers and DyHead blocks; the official ``USE_CHECKPOINT``) to train at large inputs."""

    preset: str = "fiber-tiny"
    init: str = ""
    heads: tuple[str, ...] = ()
    seed: int = 0
    freeze_prefix: bool = False
    tuning: str = "full"
    activation_checkpointing: bool = False

    def build(self, tokenizer: Tokenizer, *, init_as: str = "model", new_heads: tuple[str, ...] = (),
              config_changes: Optional[dict] = None, family: Optional[str] = None,
              with_report: bool = False) -> Union[VisionLanguageModel, tuple[VisionLanguageModel, LoadReport]]:
        """The model this spec names, from :func:`~fibervl.modeling.factory.create_model`, its
        vocabulary fitted to (or checked against) ``tokenizer``; ``new_heads`` and
        ``config_changes`` as there. ``init_as`` says what ``init`` is:

        - ``"model"``: the model itself, its architecture and weights (an earlier stage or run
          continued; ``preset`` and ``heads`` are not used);
        - ``"weights"``: a source of weights for a fresh ``preset`` model, which takes every
          weight of the same name (another architecture allowed: a coarse model into a
          fine-grained one).

        ``family``: the family the model must be of (a recipe's own; ConfigError before any
        weight is built otherwise). ``with_report``: return ``(model, LoadReport)``."""
        if init_as not in ("model", "weights"):
            raise ConfigError(f"init_as must be 'model' or 'weights', got {init_as!r}")
        options = dict(tokenizer=tokenizer, new_heads=new_heads, config_changes=config_changes, family=family, seed=self.seed,
                       freeze_prefix=self.freeze_prefix, tuning=self.tuning,
                       activation_checkpointing=self.activation_checkpointing, with_report=with_report)
        if self.init and init_as == "model":
            return create_model(resolve_model_dir(self.init), **options)
        # a directory as the preset names an architecture (its config.json), not weights
        preset = read_model_config(self.preset) if Path(self.preset).is_dir() else self.preset
        return create_model(preset, heads=self.heads, init=self.init or None, **options)


@dataclass
class DataSpec:
    """``train``: the training sources, mixed by weight (also ``--train-data SPEC``, repeatable);
    ``eval``: the evaluation source (also ``--eval-data SPEC``); each a mapping ``{format,
    annotations, images, weight, ...}`` or a SPEC string (:mod:`fibervl.data.sources`).
    Without them, ``root`` (and a recipe's older keys, e.g. ``captions`` and ``format``)
    describe one source for both: by default the shapes set ``root``. Without ``eval``, the
    first training source is evaluated when it holds several splits.
    ``tokenizer``: tokenizer directory or file (default: the ``model.init`` directory's own,
    else the shapes set's ``ROOT/tokenizer``); ``max_text_len`` / ``image_size`` 0 = the model's.
    ``skip_bad_records`` (also the switch ``--skip-bad-records``): leave bad records out, each
    warned about and summed up at the end of the run, instead of stopping at the first (and,
    in training sets, images that do not decode)."""

    root: str = "data/shapes"
    tokenizer: str = ""
    max_text_len: int = 0
    image_size: int = 0
    num_eval: int = 0  # evaluate on the first N items of the split (0 = all)
    skip_bad_records: bool = field(default=False, metadata={"switch": "--skip-bad-records"})
    train: tuple[Union[DataSource, str], ...] = field(default=(), metadata={"option": "--train-data", "repeat": True})
    eval: Optional[Union[DataSource, str]] = field(default=None, metadata={"option": "--eval-data"})

    def __post_init__(self) -> None:
        self.train = tuple(as_source(s) for s in self.train)
        if self.eval is not None:
            self.eval = as_source(self.eval)

    def legacy_source(self) -> DataSource:
        """The one source the older keys describe (a recipe with more keys overrides this)."""
        return DataSource("shapes", self.root)

    def input_sizes(self, model_config) -> tuple[int, int]:
        """(image side in pixels, most text tokens) of the batches for a model of
        ``model_config``: ``image_size`` / ``max_text_len``, where 0 means the model's own."""
        return (self.image_size or model_config.vision.image_size,
                self.max_text_len or model_config.text.max_text_len)

    def train_sources(self) -> list[DataSource]:
        return list(self.train) or [self.legacy_source()]

    def eval_source(self) -> DataSource:
        if self.eval is not None:
            return self.eval
        if not self.train:
            return self.legacy_source()
        first = self.train[0]
        if holds_splits(first):
            return dataclasses.replace(first, weight=1.0)
        raise ConfigError(f"no evaluation data: give --eval-data SPEC (data.eval); the training source {first} "
                          "is a single split")


def holds_splits(source: DataSource) -> bool:
    """Whether ``source`` can be read at another split than training's: a format whose files hold
    several (shapes, Karpathy, VQAv2) or a path with ``{split}``, and no fixed ``split``."""
    if source.split or FORMATS.get(source.format, None) is None or FORMATS[source.format].stream:
        return False
    return source.format in ("shapes", "karpathy", "vqav2") or "{split}" in source.annotations + source.images


def split_name(source: DataSource, split: str) -> str:
    """The name of the split of ``source`` that a command reads when it asks for ``split``, for
    its report: the source's own ``split`` option, else ``split`` when the source holds several,
    else the name of its annotation file or folder (``test1`` for ``nlvr2/data/test1.json``),
    since a file that is one split is read whole whatever split was asked for."""
    if source.split:
        return source.split
    if holds_splits(source):
        return split
    return Path(source.annotations).stem or split


def load_tokenizer(data: DataSpec, init: str = "") -> Tokenizer:
    """The tokenizer a run uses: ``data.tokenizer`` when named, else the ``init`` model
    directory's own ``tokenizer/``, else the shapes set's among the data sources."""
    if data.tokenizer:
        return Tokenizer.from_pretrained(Path(data.tokenizer))
    if init:
        try:
            own = resolve_model_dir(init) / "tokenizer"
        except FileNotFoundError:
            own = None
        if own is not None and own.is_dir():
            return Tokenizer.from_pretrained(own)
    sources = data.train_sources() + ([data.eval] if data.eval is not None else [])
    shapes = [s for s in sources if s.format == "shapes"]
    if shapes or not sources:
        return Tokenizer.from_pretrained(Path(shapes[0].annotations if shapes else data.root) / "tokenizer")
    raise FileNotFoundError("no tokenizer: name one with data.tokenizer=DIR, or start from a model directory that "
                            "holds its tokenizer/ (model.init=DIR)")

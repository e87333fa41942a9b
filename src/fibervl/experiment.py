"""What every stage and task shares: which model, which data, which tokenizer.

Experiment configs (YAML + ``key=value`` overrides, loaded with :mod:`fibervl.engine.config`)
embed :class:`ModelSpec` and :class:`DataSpec`; :func:`build_model` makes the model agree with
the tokenizer so a preset and a data set's own vocabulary fit together.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch

from .config import FiberConfig
from .data import Tokenizer
from .data.sources import FORMATS, DataSource, as_source
from .engine.config import ConfigError
from .engine.rng import preserved_rng
from .modeling.families import build_from_config, get_any_preset, load_config, load_pretrained
from .modeling.detection.tuning import apply_tuning_mode, needs_prompt
from .modeling.fiber import FiberModel


@dataclass
class ModelSpec:
    """``preset``: a preset name or a model directory (config.json); ``init``: a model directory
    (``save_pretrained`` output, e.g. an earlier stage's ``model/``) whose weights start the run.
    ``heads``: override the preset's heads (empty: keep). ``seed``: the seed of every weight
    initialised here rather than loaded (a fresh model, a new head), so that two runs of one
    config start from the same weights; it leaves the process's random streams as they were.
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


def model_config(spec: ModelSpec, tokenizer: Tokenizer) -> FiberConfig:
    """The preset (or saved) config with the text vocabulary and special ids of ``tokenizer``."""
    if Path(spec.preset).is_dir():
        config = load_config(spec.preset)
    else:
        config = get_any_preset(spec.preset)
    config = fit_to_tokenizer(config, tokenizer)
    if needs_prompt(spec.tuning) and config.detection is not None and not config.detection.prompt_tuning_tokens:
        # one learnable offset per position a detection prompt can have
        config = config.replace(detection=dataclasses.replace(
            config.detection, prompt_tuning_tokens=config.detection.max_query_len))
    return config.replace(heads=tuple(spec.heads)) if spec.heads else config


def fit_to_tokenizer(config, tokenizer: Tokenizer):
    """``config`` (any family's) with the text vocabulary size and special ids of ``tokenizer``."""
    text = dataclasses.replace(
        config.text, vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.mask_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return config.replace(text=text)


def _fresh(config, seed: int) -> FiberModel:
    """``build_from_config`` with its random initialisation drawn from ``seed`` alone: the
    process's default seed differs from run to run, and the trainer seeds only after the model
    exists."""
    with preserved_rng():
        torch.manual_seed(seed)
        return build_from_config(config)


def apply_freezing(model, spec: ModelSpec):
    """``model`` prepared for training as ``spec`` asks: its unfused prefixes frozen
    (``freeze_prefix``), the parts its tuning mode does not train frozen, activation
    checkpointing switched on."""
    if spec.freeze_prefix:
        if not hasattr(model, "freeze_prefix"):
            raise ValueError(f"model.freeze_prefix: {type(model).__name__} has no unfused prefix to freeze "
                             "(only FIBER models do)")
        model.freeze_prefix()
    apply_tuning_mode(model, spec.tuning)
    if spec.activation_checkpointing:
        if not hasattr(model, "set_activation_checkpointing"):
            raise ValueError(f"model.activation_checkpointing: {type(model).__name__} does not support it "
                             "(only FIBER models do)")
        model.set_activation_checkpointing(backbone=True, head=True)
    return model


def build_model(spec: ModelSpec, tokenizer: Tokenizer) -> FiberModel:
    """A fresh model of the preset, or the ``init`` model; the tokenizer must fit its vocabulary."""
    return apply_freezing(_build_model(spec, tokenizer), spec)


def _build_model(spec: ModelSpec, tokenizer: Tokenizer) -> FiberModel:
    if spec.init:
        model = load_pretrained(spec.init)
        t = model.config.text
        if (t.vocab_size, t.mask_token_id, t.pad_token_id) != (tokenizer.vocab_size, tokenizer.mask_token_id, tokenizer.pad_token_id):
            raise ValueError(
                f"the tokenizer (vocab {tokenizer.vocab_size}, mask {tokenizer.mask_token_id}) does not fit the model "
                f"in {spec.init} (vocab {t.vocab_size}, mask {t.mask_token_id})"
            )
        return model
    return _fresh(model_config(spec, tokenizer), spec.seed)


def load_compatible(model: FiberModel, source_dir: str | Path) -> tuple[list[str], list[str]]:
    """Copy every weight of the saved model in ``source_dir`` whose name exists in ``model``
    (e.g. a coarse checkpoint into a fine-grained model). Returns ``(new_keys, unused_keys)``:
    ``model`` keys the file lacks (they keep their fresh initialisation) and file keys ``model``
    has no place for. A shared name with a different shape is an error naming the key: the two
    architectures disagree and silently re-initialising it would hide that."""
    from .modeling.pretrained import WEIGHTS_NAME, read_weights

    path = Path(source_dir) / WEIGHTS_NAME
    state = read_weights(path)
    own = model.state_dict()
    wrong = [f"{k}: {path} has {tuple(v.shape)}, model expects {tuple(own[k].shape)}"
             for k, v in state.items() if k in own and v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"{len(wrong)} shared weight(s) differ in shape: " + "; ".join(wrong[:8]))
    shared = {k: v for k, v in state.items() if k in own}
    new_keys = sorted(set(own) - set(state))
    unused_keys = sorted(set(state) - set(own))
    # strict load of the merged state: every key of the model is set (shared from the file, new
    # ones from the model's own initialisation), so nothing is missed silently.
    model.load_state_dict({**own, **shared}, strict=True)
    return new_keys, unused_keys


def summarize_keys(keys: list[str], depth: int = 2) -> dict[str, int]:
    """Count parameter names by their first ``depth`` dotted parts, for a readable report:
    ``["detector.fpn.a.weight", "detector.head.b"]`` -> ``{"detector.fpn": 1, "detector.head": 1}``."""
    counts: dict[str, int] = {}
    for k in keys:
        prefix = ".".join(k.split(".")[:depth])
        counts[prefix] = counts.get(prefix, 0) + 1
    return counts


def build_model_compatible(spec: ModelSpec, tokenizer: Tokenizer) -> tuple[FiberModel, dict]:
    """A fresh model of ``spec.preset``; with ``spec.init``, every weight it shares with that
    saved model (another architecture allowed, e.g. coarse -> fine) is loaded. Returns the model
    and a report ``{"init", "new", "unused"}`` (key lists)."""
    model = _fresh(model_config(spec, tokenizer), spec.seed)
    report = {"init": spec.init, "new": [], "unused": []}
    if spec.init:
        report["new"], report["unused"] = load_compatible(model, spec.init)
    return apply_freezing(model, spec), report


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory (``config.json`` + weights) or a run directory holding ``model/``."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / "model" / "config.json").is_file():
        return path / "model"
    raise FileNotFoundError(f"{path} is neither a model directory (config.json) nor a run directory with model/config.json")


def build_task_model(spec: ModelSpec, tokenizer: Tokenizer, new_heads: tuple[str, ...] = (),
                     **config_changes) -> tuple[FiberModel, list[str]]:
    """The model a task fine-tunes: ``spec.init`` (a model or run directory) with its config
    changed by ``config_changes`` (e.g. ``vqa_num_answers=len(vocab)``) and the heads in
    ``new_heads`` added if missing and freshly initialised; every other weight is loaded from
    the init file and must be there with the same shape. Without ``init``: a fresh model.

    Returns (model, new weight names): the weights the init did not provide.
    """
    if not spec.init:
        config = model_config(spec, tokenizer)
        heads = tuple(config.heads) + tuple(h for h in new_heads if h not in config.heads)
        model = _fresh(config.replace(heads=heads, **config_changes), spec.seed)
        return apply_freezing(model, spec), sorted(model.state_dict())
    from .modeling.pretrained import CheckpointError, WEIGHTS_NAME, read_weights

    directory = resolve_model_dir(spec.init)
    base = load_pretrained(directory)  # validates the saved config and file as they are
    t = base.config.text
    if (t.vocab_size, t.mask_token_id, t.pad_token_id) != (tokenizer.vocab_size, tokenizer.mask_token_id, tokenizer.pad_token_id):
        raise ValueError(f"the tokenizer (vocab {tokenizer.vocab_size}) does not fit the model in {directory} (vocab {t.vocab_size})")
    heads = tuple(base.config.heads) + tuple(h for h in new_heads if h not in base.config.heads)
    model = _fresh(base.config.replace(heads=heads, **config_changes), spec.seed)
    state = read_weights(directory / WEIGHTS_NAME)
    fresh = tuple(f"heads.{h}." for h in new_heads)
    expected = model.state_dict()
    load = {k: v for k, v in state.items() if not k.startswith(fresh)}
    missing = sorted(k for k in expected if k not in load and not k.startswith(fresh))
    unknown = sorted(k for k in load if k not in expected)
    wrong = sorted(k for k in load if k in expected and load[k].shape != expected[k].shape)
    if missing or unknown or wrong:
        raise CheckpointError(f"{directory / WEIGHTS_NAME} does not fit the task model: missing {missing[:8]}, "
                              f"unknown {unknown[:8]}, shape mismatches {wrong[:8]}")
    new = sorted(k for k in expected if k not in load)
    expected.update(load)
    model.load_state_dict(expected, strict=True)
    return apply_freezing(model, spec), new

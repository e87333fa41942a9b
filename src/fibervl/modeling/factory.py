"""``create_model``: the one way to build a model of any family (FIBER, ALBEF, VLMo).

Everything that needs a model (recipes, ``fibervl.load``, the demo, export, benches, tests) asks
:func:`create_model`, and names what it starts from with its first argument:

* a preset name (``"fiber-tiny"``, ``"albef-tiny"``; :func:`list_presets`) or a config object of
  any family: a fresh model, its weights drawn from ``seed`` alone;
* a model directory (``save_pretrained`` output: ``config.json`` + ``model.safetensors``) or a
  run directory holding ``model/``: the saved model, every weight loaded strictly;
* ``"official-coarse:PATH"`` / ``"official-fine:PATH"``: an official FIBER checkpoint, converted.

Keyword options then fit the text vocabulary to a tokenizer, add or re-initialise heads, change
config fields (``vqa_num_answers``), copy the weights another architecture shares (``init=``, a
coarse model into a fine-grained one) and prepare the model for training (freezing, tuning mode,
activation checkpointing). A family is registered in :data:`FAMILIES`; its config carries a
``family`` field, which is how a saved directory finds its class.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Optional, Protocol, Sequence, Union, overload

import torch

from ..config import PRESETS as FIBER_PRESETS
from ..config import FiberConfig, read_config_json
from ..errors import CheckpointError, ConfigError
from . import pretrained
from .detection.tuning import apply_tuning_mode, check_tuning_mode, needs_prompt
from .protocol import ModelConfig, VisionLanguageModel

# ---- the family registry -----------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """A model family: its config class (with a ``family`` field equal to ``name``), its model
    class (``model_cls(config)`` builds a fresh model) and its presets (name -> fresh config)."""

    name: str
    config_cls: type
    model_cls: type
    presets: dict[str, Callable[[], Any]]


def _fiber() -> Family:
    from .fiber import FiberModel

    return Family("fiber", FiberConfig, FiberModel, dict(FIBER_PRESETS))


def _albef() -> Family:
    from .albef import ALBEF_PRESETS, AlbefConfig, AlbefModel

    return Family("albef", AlbefConfig, AlbefModel, dict(ALBEF_PRESETS))


def _vlmo() -> Family:
    from .vlmo import VLMO_PRESETS, VlmoConfig, VlmoModel

    return Family("vlmo", VlmoConfig, VlmoModel, dict(VLMO_PRESETS))


# family name -> its loader; a family's module is imported the first time it is asked for.
FAMILIES: dict[str, Callable[[], Family]] = {"fiber": _fiber, "albef": _albef, "vlmo": _vlmo}


def family_names() -> list[str]:
    return list(FAMILIES)


def get_family(name: str) -> Family:
    try:
        loader = FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown model family {name!r}; known: {family_names()}") from None
    return loader()


def family_of(config: ModelConfig) -> Family:
    """The family of ``config`` (its ``family`` field), checked against the config's class."""
    family = get_family(getattr(config, "family", None))
    if not isinstance(config, family.config_cls):
        raise ConfigError(f"a {type(config).__name__} says family {config.family!r}, whose config is "
                          f"{family.config_cls.__name__}")
    return family


def list_presets() -> dict[str, str]:
    """Every preset name -> its family name."""
    return {preset: name for name in FAMILIES for preset in get_family(name).presets}


def preset_config(name: str) -> ModelConfig:
    """A fresh config for preset ``name`` of any family; an unknown name lists them all."""
    for family_name in FAMILIES:
        presets = get_family(family_name).presets
        if name in presets:
            return presets[name]()
    raise ConfigError(f"unknown preset {name!r}; known presets: {sorted(list_presets())}")


# ---- model directories ---------------------------------------------------------------------


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory (``config.json`` + weights) or a run directory holding ``model/``."""
    path = Path(path)
    if (path / pretrained.CONFIG_NAME).is_file():
        return path
    if (path / "model" / pretrained.CONFIG_NAME).is_file():
        return path / "model"
    raise FileNotFoundError(f"{path} is neither a model directory (config.json) nor a run directory with model/config.json")


def read_model_config(directory: str | Path) -> ModelConfig:
    """The config saved in ``directory`` (a model or run directory), as its family's config
    class; a ``config.json`` without a ``family`` key is FIBER's (saved before families had one)."""
    path = resolve_model_dir(directory) / pretrained.CONFIG_NAME
    data = read_config_json(path)
    data.pop(pretrained.CARD_KEY, None)
    try:
        family = get_family(data.get("family", "fiber"))
        return family.config_cls.from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


# ---- building --------------------------------------------------------------------------------


class TokenizerLike(Protocol):
    """What the factory reads of a tokenizer (``fibervl.data.Tokenizer`` has it)."""

    vocab_size: int
    mask_token_id: int
    pad_token_id: int
    bos_token_id: int
    eos_token_id: int


def fit_to_tokenizer(config: ModelConfig, tokenizer: TokenizerLike) -> ModelConfig:
    """``config`` (any family's) with the text vocabulary size and special ids of ``tokenizer``."""
    text = dataclasses.replace(
        config.text, vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.mask_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return config.replace(text=text)


@contextlib.contextmanager
def weights_drawn_from(seed: Optional[int]) -> Iterator[None]:
    """Within the block, random initialisation draws from ``seed`` alone and leaves the process's
    random streams as they were: the process's default seed differs from run to run, and the
    trainer seeds only after the model exists. Building a model draws from torch's generators
    only (CPU, and CUDA where initialised), which are the ones saved and restored.
    ``seed=None``: draw from the process's own stream, as ``ModelClass(config)`` does."""
    if seed is None:
        yield
        return
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        torch.manual_seed(seed)
        yield


@dataclass
class LoadReport:
    """Where a model's weights came from. ``source``: what :func:`create_model` built from;
    ``init``: the directory whose shared weights were copied (``init=``), else ""; ``new``: the
    weight names initialised here rather than loaded (all of them for a fresh model); ``unused``:
    names in the ``init`` file the model has no place for; ``dropped``: official checkpoint keys
    the converter left out, with the reason."""

    source: str
    init: str = ""
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def summarize_keys(keys: list[str], depth: int = 2) -> dict[str, int]:
    """Count parameter names by their first ``depth`` dotted parts, for a readable report:
    ``["detector.fpn.a.weight", "detector.head.b"]`` -> ``{"detector.fpn": 1, "detector.head": 1}``."""
    counts: dict[str, int] = {}
    for k in keys:
        prefix = ".".join(k.split(".")[:depth])
        counts[prefix] = counts.get(prefix, 0) + 1
    return counts


# Official checkpoints are reached through their converters in ``fibervl.convert``, named here
# as "module:function" and imported only when such a checkpoint is asked for. The converters sit
# above the model (they build a FiberModel and load it strictly, and read the official files
# with the engine's guarded torch.load), so the model layer never imports them at module level:
# ``import fibervl.modeling`` stays free of them. A registration by the converters themselves
# would invert the dependency too, but someone would still have to import them before the first
# official checkpoint, which is the lazy import again, only less visible.
OFFICIAL_CONVERTERS = {
    "official-coarse": "fibervl.convert.official_coarse:convert_official_coarse",
    "official-fine": "fibervl.convert.official_fine:convert_official_fine",
}

Source = Union[str, Path, ModelConfig]


@overload
def create_model(source: Source, *, with_report: Literal[False] = ..., **options: Any) -> VisionLanguageModel: ...


@overload
def create_model(source: Source, *, with_report: Literal[True], **options: Any) -> tuple[VisionLanguageModel, LoadReport]: ...


def create_model(
    source: Source,
    *,
    tokenizer: Optional[TokenizerLike] = None,
    heads: Sequence[str] = (),
    new_heads: Sequence[str] = (),
    config_changes: Optional[Mapping[str, Any]] = None,
    init: str | Path | None = None,
    seed: Optional[int] = 0,
    family: Optional[str] = None,
    freeze_prefix: bool = False,
    tuning: str = "full",
    activation_checkpointing: bool = False,
    device: str | torch.device = "cpu",
    convert_options: Optional[Mapping[str, Any]] = None,
    with_report: bool = False,
):
    """Build a model of any family (see the module docstring for what ``source`` may be).

    ``tokenizer``: a fresh model's text vocabulary and special ids are fitted to it; a loaded
    model must already fit it (vocabulary, mask and pad ids), else a ConfigError.
    ``heads``: replace a preset's or config's heads (a saved model keeps its own).
    ``new_heads``: heads added when missing and freshly initialised even when the source has
    them (a new task's head); every other weight of a saved model must be in its file with the
    same shape (CheckpointError naming the file and the keys).
    ``config_changes``: top-level config fields to change first, e.g. ``{"vqa_num_answers": 11}``.
    ``init``: with a preset or config, a model or run directory (of another architecture too:
    a coarse model into a fine-grained one) whose weights replace every fresh weight of the same
    name; a shared name with another shape is a CheckpointError.
    ``seed``: the seed of every weight initialised here rather than loaded (a fresh model, a new
    head), so that two runs of one config start from the same weights; the process's random
    streams are left as they were. ``None``: draw from the process's stream instead.
    ``family``: the family the source must be of (ConfigError otherwise).
    ``freeze_prefix``, ``tuning``, ``activation_checkpointing``: prepare for training (see
    :func:`_prepare_for_training`). ``device``: where the model ends up.
    ``convert_options``: keyword arguments of an official checkpoint's converter (``image_size``).
    ``with_report``: return ``(model, LoadReport)`` instead of the model.
    """
    check_tuning_mode(tuning)
    extras = dict(new_heads=tuple(new_heads), changes=dict(config_changes or {}), seed=seed)
    label, official = _describe(source)
    if official is None and isinstance(source, (str, Path)) and Path(source).is_dir():
        # a saved model: its own config and every weight (strict), then new heads or changes
        directory = resolve_model_dir(source)
        _only_for_fresh(f"{directory} is a saved model", heads, init)
        config = read_model_config(directory)
        _check_family(config, family, directory)
        _check_tokenizer(config, tokenizer, directory)
        base = pretrained.load_saved(get_family(config.family).model_cls, config, directory, device)
        model, report = _extend(base, str(directory / pretrained.WEIGHTS_NAME), **extras)
    elif official is not None:
        # an official checkpoint: converted (strict), then new heads or changes
        _only_for_fresh(f"{label} is an official checkpoint", heads, init)
        base, dropped = _convert(official, label, convert_options)
        _check_family(base.config, family, label)
        _check_tokenizer(base.config, tokenizer, label)
        model, report = _extend(base, label, **extras)
        report.dropped = dict(dropped)
    else:
        # a preset or a config: a fresh model drawn from the seed, then the weights it shares with init
        if isinstance(source, Path) or (isinstance(source, str) and ("/" in source or Path(source).exists())):
            raise FileNotFoundError(f"{source} is neither a model directory (config.json, or model/config.json) nor a "
                                    "preset; an official checkpoint file is named official-coarse:PATH or official-fine:PATH")
        config = preset_config(source) if isinstance(source, str) else source
        _check_family(config, family, label)
        config = _fresh_config(config, tokenizer, tuple(heads), tuning, extras["new_heads"], extras["changes"])
        model = _fresh(config, seed)
        report = LoadReport(label, new=sorted(model.state_dict()))
        if init is not None and str(init):
            report.init = str(init)
            report.new, report.unused = _copy_shared_weights(model, resolve_model_dir(init))
    if not isinstance(model, VisionLanguageModel):
        raise TypeError(f"{type(model).__name__} does not offer the vision-language model protocol "
                        "(fibervl.modeling.protocol.VisionLanguageModel)")
    model = _prepare_for_training(model.to(device), freeze_prefix, tuning, activation_checkpointing)
    return (model, report) if with_report else model


def _only_for_fresh(what: str, heads, init) -> None:
    if heads or (init is not None and str(init)):
        raise ConfigError(f"{what}: it keeps its own heads and weights (heads= and init= apply to a preset or a "
                          "config; add heads with new_heads=)")


def _describe(source) -> tuple[str, Optional[str]]:
    """(a label for messages, the official converter's name or None)."""
    if isinstance(source, (str, Path)):
        text = str(source)
        kind, sep, path = text.partition(":")
        if sep and kind in OFFICIAL_CONVERTERS:
            return path, kind
        return text, None
    return f"a {type(source).__name__} ({getattr(source, 'name', '?')})", None


def _check_family(config, family: Optional[str], where) -> None:
    if family is not None and family_of(config).name != family:
        raise ConfigError(f"{where} is a {config.family} model, not a {family} model")


def _check_tokenizer(config, tokenizer: Optional[TokenizerLike], where) -> None:
    if tokenizer is None:
        return
    t = config.text
    if (t.vocab_size, t.mask_token_id, t.pad_token_id) != (tokenizer.vocab_size, tokenizer.mask_token_id, tokenizer.pad_token_id):
        raise ConfigError(
            f"the tokenizer (vocab {tokenizer.vocab_size}, mask {tokenizer.mask_token_id}, pad {tokenizer.pad_token_id}) "
            f"does not fit the model in {where} (vocab {t.vocab_size}, mask {t.mask_token_id}, pad {t.pad_token_id})")


def _with_extras(config: ModelConfig, new_heads: tuple[str, ...], changes: dict) -> ModelConfig:
    heads = tuple(config.heads) + tuple(h for h in new_heads if h not in config.heads)
    return config.replace(heads=heads, **changes)


def _fresh_config(config, tokenizer, heads, tuning, new_heads, changes) -> ModelConfig:
    """A preset's or given config made ready: fitted to the tokenizer, with the prompt offsets a
    prompt-tuning mode trains, its heads replaced, new heads added and ``changes`` applied."""
    family_of(config)
    if tokenizer is not None:
        config = fit_to_tokenizer(config, tokenizer)
    detection = getattr(config, "detection", None)
    if needs_prompt(tuning) and detection is not None and not detection.prompt_tuning_tokens:
        # one learnable offset per position a detection prompt can have
        config = config.replace(detection=dataclasses.replace(detection, prompt_tuning_tokens=detection.max_query_len))
    if heads:
        config = config.replace(heads=tuple(heads))
    return _with_extras(config, new_heads, changes)


def _fresh(config: ModelConfig, seed: Optional[int]):
    with weights_drawn_from(seed):
        return family_of(config).model_cls(config)


def _extend(base, source: str, new_heads: tuple[str, ...], changes: dict, seed: Optional[int]):
    """``base`` (a loaded model) with its config changed by ``changes`` and ``new_heads`` fresh:
    a fresh model of the changed config takes every other weight of ``base``, which must all be
    there with the same shape. Returns (model, LoadReport)."""
    config = _with_extras(base.config, new_heads, changes)
    if not new_heads and config == base.config:
        return base, LoadReport(source)
    model = _fresh(config, seed)
    fresh = tuple(f"heads.{h}." for h in new_heads)
    state = {k: v for k, v in base.state_dict().items() if not k.startswith(fresh)}
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state and not k.startswith(fresh))
    unknown = sorted(k for k in state if k not in expected)
    wrong = sorted(f"{k}: file has {tuple(state[k].shape)}, model expects {tuple(expected[k].shape)}"
                   for k in state if k in expected and state[k].shape != expected[k].shape)
    if missing or unknown or wrong:
        raise CheckpointError(f"{source} does not fit the model (new heads {list(new_heads)}, config changes {changes}): "
                              f"missing {missing[:8]}, unknown {unknown[:8]}, shape mismatches {wrong[:8]}; a head whose "
                              "shape changes must be among the new heads")
    new = sorted(k for k in expected if k not in state)
    expected.update(state)
    model.load_state_dict(expected, strict=True)
    return model, LoadReport(source, new=new)


def _copy_shared_weights(model, directory: Path) -> tuple[list[str], list[str]]:
    """Copy every weight of the model saved in ``directory`` whose name exists in ``model``.
    Returns ``(new, unused)``: ``model`` names the file lacks (they keep their fresh
    initialisation) and file names ``model`` has no place for. A shared name with another shape
    is an error naming it: the two architectures disagree, and silently re-initialising the weight
    would hide that."""
    path = directory / pretrained.WEIGHTS_NAME
    state = pretrained.read_weights(path)
    own = model.state_dict()
    wrong = [f"{k}: {path} has {tuple(v.shape)}, model expects {tuple(own[k].shape)}"
             for k, v in state.items() if k in own and v.shape != own[k].shape]
    if wrong:
        raise CheckpointError(f"{len(wrong)} shared weight(s) differ in shape: " + "; ".join(wrong[:8]))
    shared = {k: v for k, v in state.items() if k in own}
    # strict load of the merged state: every key of the model is set (shared from the file, new
    # ones from the model's own initialisation), so nothing is missed silently.
    model.load_state_dict({**own, **shared}, strict=True)
    return sorted(set(own) - set(state)), sorted(set(state) - set(own))


def _convert(kind: str, path: str, options: Optional[Mapping[str, Any]]):
    """An official checkpoint through its converter -> (model, {dropped key: reason})."""
    module, _, function = OFFICIAL_CONVERTERS[kind].partition(":")
    convert = getattr(importlib.import_module(module), function)
    return convert(path, **dict(options or {}))


def _prepare_for_training(model, freeze_prefix: bool = False, tuning: str = "full",
                         activation_checkpointing: bool = False):
    """``model`` with its unfused prefixes frozen (``freeze_prefix``: train only what lies above
    the first fused block), the parts its tuning mode does not train frozen (``tuning``, one of
    :data:`fibervl.modeling.detection.tuning.TRAINED_PARTS`) and activations recomputed in the
    backward pass (``activation_checkpointing``: backbone blocks, text layers and DyHead blocks,
    the official ``USE_CHECKPOINT``)."""
    if freeze_prefix:
        if not hasattr(model, "freeze_prefix"):
            raise ConfigError(f"model.freeze_prefix: {type(model).__name__} has no unfused prefix to freeze "
                              "(only FIBER models do)")
        model.freeze_prefix()
    apply_tuning_mode(model, tuning)
    if activation_checkpointing:
        if not hasattr(model, "set_activation_checkpointing"):
            raise ConfigError(f"model.activation_checkpointing: {type(model).__name__} does not support it "
                              "(only FIBER models do)")
        model.set_activation_checkpointing(backbone=True, head=True)
    return model

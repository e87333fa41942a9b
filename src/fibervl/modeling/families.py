"""Model families: FIBER, and the systems it is compared with, behind one interface.

Tasks and recipes never name a model class. They build models from a preset name or a saved
directory through this module, and use only the *vision-language model protocol*:

    model.config                      a dataclass with .text (TextConfig), .hidden_size, .heads,
                                      .vqa_num_answers, .name, .replace(**changes), .save(path)
    model.encode_image(images)        [B, 3, H, W] -> [B, D] L2-normalised (dual encoder)
    model.encode_text(ids, mask)      [B, T] -> [B, D] L2-normalised
    model.temperature                 the learned ITC temperature (a Parameter)
    model.fuse(images, ids, mask)     -> FusionOutput: .cls_feats [B, 2H], .text_feats [B, T, H]
    model.image_prefix(images), model.text_prefix(ids, mask)
                                      [B, ...] tensors: what the dual and fused modes compute
                                      alike (everything below the first fusion layer); passed
                                      as ``image_prefix=`` / ``text_prefix=`` to encode_image,
                                      encode_text and fuse, they stand for those passes, so a
                                      task that sees an image or text several times in a step
                                      (ITC, ITM pairs, MLM; re-ranking) computes them once
    model.itm_logits / mlm_logits / vqa_logits / nlvr2_logits    the heads
    model.save_pretrained(dir), Family.model_cls.from_pretrained(dir)

A family's config dataclass other than FIBER's carries a ``family`` field (FIBER's saved
configs predate families and have none: no field means "fiber"), which is how a saved
directory finds its class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..config import PRESETS as FIBER_PRESETS
from ..config import ConfigError, FiberConfig, read_config_json


@dataclass(frozen=True)
class Family:
    """``presets``: preset name -> a function returning a fresh config."""

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


# Imported on first use: each family's module is loaded only when asked for.
_LOADERS: dict[str, Callable[[], Family]] = {"fiber": _fiber}
for _name, _loader in (("albef", _albef), ("vlmo", _vlmo)):
    if (Path(__file__).parent / f"{_name}.py").is_file():
        _LOADERS[_name] = _loader


def family_names() -> list[str]:
    return list(_LOADERS)


def get_family(name: str) -> Family:
    try:
        return _LOADERS[name]()
    except KeyError:
        raise ConfigError(f"unknown model family {name!r}; known: {family_names()}") from None


def family_of_config(config: Any) -> Family:
    """The family whose config class ``config`` is an instance of."""
    for name in _LOADERS:
        family = get_family(name)
        if isinstance(config, family.config_cls):
            return family
    raise ConfigError(f"{type(config).__name__} is not the config of any model family {family_names()}")


def all_presets() -> dict[str, str]:
    """Every preset name -> its family name."""
    return {preset: name for name in _LOADERS for preset in get_family(name).presets}


def get_any_preset(name: str) -> Any:
    """A fresh config for preset ``name`` of any family; an unknown name lists them all."""
    for family_name in _LOADERS:
        family = get_family(family_name)
        if name in family.presets:
            return family.presets[name]()
    raise ConfigError(f"unknown preset {name!r}; known presets: {sorted(all_presets())}")


def build_from_config(config: Any) -> nn.Module:
    """A freshly initialised model of ``config``'s family."""
    return family_of_config(config).model_cls(config)


def saved_family(directory: str | Path) -> Family:
    """The family of the model saved in ``directory`` (read from its ``config.json``)."""
    return get_family(read_config_json(Path(directory) / "config.json").get("family", "fiber"))


def load_config(directory: str | Path) -> Any:
    """The saved config of ``directory``, as its family's config class (its card left out)."""
    from .pretrained import read_config

    return read_config(saved_family(directory).config_cls, Path(directory) / "config.json")


def load_pretrained(directory: str | Path, map_location: str = "cpu") -> nn.Module:
    """Any family's ``save_pretrained`` directory -> the model (strict: every weight present)."""
    return saved_family(directory).model_cls.from_pretrained(directory, map_location=map_location)

"""The files of a model directory: ``config.json`` + ``model.safetensors``, written atomically
and read strictly (:func:`fibervl.modeling.factory.create_model` builds models from them).

``config.json`` holds the model's config and, optionally, a ``"card"`` entry: JSON metadata for
whoever uses the directory (see :mod:`fibervl.predict.card`), which the model never reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import read_config_json
from ..errors import CheckpointError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_KEY = "card"


def save_pretrained(model: nn.Module, directory: str | Path, card: dict | None = None) -> None:
    """Write config.json (with ``card`` under ``"card"`` when given) and model.safetensors
    atomically (temporary file, then rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    data = model.config.to_dict()
    if card is not None:
        data[CARD_KEY] = card
    _atomic_write(directory / WEIGHTS_NAME, lambda path: save_file(state, str(path), metadata={"format": "pt"}))
    _atomic_write(directory / CONFIG_NAME, lambda path: path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


def read_card(directory: str | Path) -> dict | None:
    """The card saved in ``directory/config.json``, or None (a directory saved without one)."""
    return read_config_json(Path(directory) / CONFIG_NAME).get(CARD_KEY)


def _atomic_write(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing or damaged file raises with its path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read safetensors weights ({err}); the file may be truncated or corrupt") from None


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every key or fail, naming missing/unknown keys and shape mismatches with ``source``."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file has {tuple(state[k].shape)}, model expects {tuple(expected[k].shape)}"
        for k in expected if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_preview(missing)}")
    if unknown:
        problems.append(f"unknown keys ({len(unknown)}): {_preview(unknown)}")
    if wrong:
        problems.append(f"shape mismatches ({len(wrong)}): {_preview(wrong)}")
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def _preview(items: list[str], n: int = 8) -> str:
    more = f", ... ({len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


# Models loaded inside ``loaded_once()`` blocks, by (class, directory, device, weights file
# version); None outside them.
_loaded: dict | None = None


@contextlib.contextmanager
def loaded_once():
    """Within the block, loading a model directory again returns the model loaded there the
    first time (unless its weights file changed since). For read-only use, such as the main
    job's report calling ``predict`` on each stage's model for several images."""
    global _loaded
    outer = _loaded
    _loaded = {} if outer is None else outer
    try:
        yield
    finally:
        _loaded = outer


def load_saved(model_cls, config, directory: str | Path, device="cpu"):
    """``model_cls(config)`` with every weight of ``directory/model.safetensors`` (strict), on
    ``device``; ``config`` is the one saved beside the weights."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory not found: {directory}")
    key = None
    if _loaded is not None and (directory / WEIGHTS_NAME).is_file():
        stat = (directory / WEIGHTS_NAME).stat()
        key = (model_cls, str(directory.resolve()), str(device), stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if key in _loaded:
            return _loaded[key]
    model = model_cls(config)
    state = read_weights(directory / WEIGHTS_NAME)
    load_state_strict(model, state, str(directory / WEIGHTS_NAME))
    model = model.to(device)
    if key is not None:
        _loaded[key] = model
    return model

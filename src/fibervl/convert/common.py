"""Shared pieces of the checkpoint converters: strict key mapping and safe checkpoint reading."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..engine.checkpoint import describe_torch_load_error


class ConversionError(ValueError):
    """A source checkpoint has a key no rule knows, lacks a needed key, or holds a bad tensor."""


class KeyMapper:
    """Rename keys by ordered regex rules, or drop them for a stated reason; anything else is an error.

    ``rules``: (pattern, replacement) pairs matched with ``re.fullmatch``; ``drops``: (pattern,
    reason) pairs checked first. After :meth:`apply`, ``renamed`` maps each source key to its new name.
    """

    def __init__(self, rules: list[tuple[str, str]], drops: list[tuple[str, str]]) -> None:
        self.rules = [(re.compile(p), r) for p, r in rules]
        self.drops = [(re.compile(p), why) for p, why in drops]
        self.renamed: dict[str, str] = {}

    def apply(self, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        converted: dict[str, torch.Tensor] = {}
        dropped: dict[str, str] = {}
        unknown: list[str] = []
        for key, value in state.items():
            reason = next((why for pattern, why in self.drops if pattern.fullmatch(key)), None)
            if reason is not None:
                dropped[key] = reason
                continue
            new = next((pattern.sub(repl, key) for pattern, repl in self.rules if pattern.fullmatch(key)), None)
            if new is None:
                unknown.append(key)
                continue
            if new in converted:
                raise ConversionError(f"two source keys map to {new!r} (second: {key!r})")
            self.renamed[key] = new
            converted[new] = value
        if unknown:
            shown = ", ".join(unknown[:10]) + (f", ... ({len(unknown) - 10} more)" if len(unknown) > 10 else "")
            raise ConversionError(f"unknown source key(s) ({len(unknown)}): {shown}")
        return converted, dropped


def load_torch_checkpoint(path: str | Path, nested_keys: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Load a torch checkpoint without executing code (``weights_only=True``).

    If the file holds a dict with one of ``nested_keys`` (e.g. Lightning's "state_dict", the
    detector's "model"), that entry is the state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged or unsafe files
        raise ConversionError(f"cannot load torch checkpoint {describe_torch_load_error(path, err)}") from None
    if isinstance(obj, dict):
        for key in nested_keys:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{path}: expected a state dict of tensors (looked under {list(nested_keys)})")
    return obj

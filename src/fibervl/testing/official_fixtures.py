"""Regenerate official-FIBER weights with the golden fixtures' weight rule.

The fixture directory (``$FIBERVL_OFFICIAL_FIXTURES``, default ``tests/fixtures/official_fiber`` in
the repository, so that a clone with nothing beside it runs the parity tests) holds inputs and
outputs of the official code plus a key list (``coarse_keys.json`` / ``fine_keys.json``). The
weights themselves are not stored: every tensor follows a deterministic rule keyed by its
official name, reproduced here. See the fixture README.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

_REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_FIXTURE_DIR = _REPO_ROOT / "tests" / "fixtures" / "official_fiber"


def fixture_dir() -> Path:
    """The fixture directory; raises if it does not exist (parity must fail, not skip)."""
    path = Path(os.environ.get("FIBERVL_OFFICIAL_FIXTURES", DEFAULT_FIXTURE_DIR))
    if not path.is_dir():
        raise FileNotFoundError(
            f"official FIBER fixture directory not found: {path} "
            "(set FIBERVL_OFFICIAL_FIXTURES to the directory holding coarse_keys.json)"
        )
    return path


def load_fixture(name: str, directory: Path | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load ``{name}_inputs_outputs.safetensors`` -> (tensors, metadata). ``name`` is coarse or fine."""
    path = (directory or fixture_dir()) / f"{name}_inputs_outputs.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"fixture file missing: {path}")
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata() or {})
    return tensors, meta


def key_seed(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") % (2**63)


_EXCLUDED = ("relative_position_index", "attn_mask", "position_ids", "token_type_ids", "cell_anchors")


def rule_tensor(key: str, shape: list[int], alpha_base: float) -> torch.Tensor:
    """The value the fixture rule gives the float tensor named ``key`` (official name)."""
    if key == "temp":
        return torch.tensor(0.07, dtype=torch.float32).reshape(shape)
    if len(shape) == 1 and key.endswith(".weight"):
        base = 1.0
    elif key.endswith("alpha_i2t") or key.endswith("alpha_t2i"):
        base = alpha_base
    else:
        base = 0.0
    gen = torch.Generator().manual_seed(key_seed(key))
    z = torch.randn(shape, generator=gen, dtype=torch.float32)
    return base + 0.02 * z


def official_state_dict(name: str, directory: Path | None = None, alpha_base: float | None = None) -> dict[str, torch.Tensor]:
    """Rebuild the official state_dict of fixture ``name`` ("coarse" or "fine") from the rule.

    Excluded buffers (structural indices, masks, queues, anchors) are left out, except that the
    tied ``rank_output.*`` tensors are rebuilt as rows 1: of ``itm_score.fc.*``, as the official
    model ties them.
    """
    directory = directory or fixture_dir()
    keys_path = directory / f"{name}_keys.json"
    if not keys_path.is_file():
        raise FileNotFoundError(f"fixture key list missing: {keys_path}")
    entries = json.loads(keys_path.read_text(encoding="utf-8"))
    if alpha_base is None:
        _, meta = load_fixture(name, directory)
        alpha_base = float(meta.get("alpha_base", "0.5"))
    state: dict[str, torch.Tensor] = {}
    for entry in entries:
        key, shape = entry["key"], entry["shape"]
        if entry["dtype"] != "float32" or any(s in key for s in _EXCLUDED) or "queue" in key or "ptr" in key:
            continue
        if "tied_to" in entry:
            continue
        state[key] = rule_tensor(key, shape, alpha_base)
    for entry in entries:
        if "tied_to" in entry:
            src = entry["key"].replace("rank_output", "itm_score.fc")
            state[entry["key"]] = state[src][1:].clone()
    return state

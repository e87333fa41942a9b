"""Atomic, verifiable training checkpoints.

Layout under a checkpoint root (the trainer uses ``<run_dir>/checkpoints``)::

    checkpoints/
      latest                      # text "step_00000100": newest checkpoint (atomically replaced)
      step_00000100/
        model.safetensors         # model weights (shared/tied tensors stored once)
        ema.safetensors           # EMA weights, when EMA is on (any extra weight file: <name>.safetensors)
        state.pt                  # everything else, tensors and primitive containers only
        meta.json                 # written last: format, step, and size + sha256 of every file

Writing (:func:`save_checkpoint`): every file goes into a temporary directory
``.tmp-step_00000100-<pid>`` beside the final one and is fsynced; ``meta.json`` is written last;
the directory is renamed into place with :func:`os.replace` (atomic on POSIX) and the parent is
fsynced; then ``latest`` is rewritten the same way (temp file, fsync, replace). A process killed at
any point leaves either the previous complete checkpoints or the new complete one, plus at most a
stale ``.tmp-*`` directory, which the next save removes. A write that fails (disk full) removes its
temporary directory and raises :class:`CheckpointError` saying which checkpoint was not written;
the earlier checkpoints are never opened for writing.

Reading: ``state.pt`` is loaded with ``torch.load(weights_only=True)`` and weights through
safetensors, so a checkpoint file can never run code. :func:`verify_checkpoint` checks the files
against ``meta.json``; a truncated or corrupt file raises :class:`CheckpointError` naming it.
:func:`find_latest_checkpoint` returns the newest *complete* checkpoint (it does not trust
``latest`` blindly: a run killed between the rename and the pointer update still resumes from the
newest one), and says which checkpoints it skipped and why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from ..errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step_(\d+)$")
# Test hook (used by the resume tests only): "<phase>:<step>" makes the save of that step touch
# <root>/.test-paused and sleep forever, so that a test can SIGKILL the process at exactly that
# point of the protocol. The phases, in the order a save reaches them:
PAUSE_PHASES = ("after_model", "before_meta", "before_rename", "before_latest", "before_prune")
_PAUSE_ENV = "FIBERVL_CKPT_TEST_PAUSE"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _maybe_pause(root: Path, phase: str, step: int) -> None:
    spec = os.environ.get(_PAUSE_ENV)
    if not spec:
        return
    want_phase, _, want_step = spec.partition(":")
    if want_phase == phase and want_step and int(want_step) == step:
        (root / ".test-paused").write_text(f"{phase}:{step}\n", encoding="utf-8")
        while True:  # wait to be killed
            time.sleep(1.0)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a fsynced temp file in the same directory + os.replace.

    If the write fails (e.g. the disk is full) ``path`` keeps its old content and the temp file
    is removed."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step_*`` directory under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def _cleanup_stale(root: Path) -> None:
    for p in root.iterdir():
        if p.name.startswith((".tmp-", ".del-")) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(
    root: str | Path,
    step: int,
    model: nn.Module,
    state: dict[str, Any],
    extra_weights: Optional[dict[str, dict[str, torch.Tensor]]] = None,
    keep_last: int = 0,
) -> Path:
    """Write checkpoint ``root/step_<step>`` atomically and point ``root/latest`` at it.

    ``model``: its ``state_dict`` goes to ``model.safetensors`` (tied tensors once).
    ``state``: tensors and primitive containers only (loadable with ``weights_only=True``).
    ``extra_weights``: ``{"ema": {name: tensor}}`` -> ``ema.safetensors``.
    ``keep_last``: if > 0, delete all but the newest ``keep_last`` checkpoints afterwards.
    Returns the final checkpoint directory. An existing directory for the same step is replaced.

    Raises :class:`CheckpointError` if a file cannot be written (disk full, I/O error): the
    temporary directory is removed and every earlier checkpoint is left as it was.
    """
    for key in extra_weights or {}:
        if not re.fullmatch(r"[A-Za-z0-9_]+", key) or key in ("model", "state", "meta"):
            raise ValueError(f"bad extra weight file name {key!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _cleanup_stale(root)
    name = step_dir_name(step)
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    try:
        tmp.mkdir()
        _write_files(tmp, step, model, state, extra_weights or {})
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written directory never lingers
        if isinstance(e, Exception):  # torch and safetensors report a full disk as their own types
            raise CheckpointError(
                f"could not write checkpoint {name} in {root} ({type(e).__name__}: {e}); nothing was "
                f"replaced: the earlier checkpoints are untouched (newest complete: {_newest_name(root)})"
            ) from e
        raise
    _maybe_pause(root, "before_rename", step)
    if final.exists():
        trash = root / f".del-{name}-{os.getpid()}"
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(root)
    _maybe_pause(root, "before_latest", step)
    try:
        write_text_atomic(root / "latest", name + "\n")
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {final} is complete, but {root / 'latest'} could not be updated ({type(e).__name__}: "
            f"{e}); resume=auto still finds {name}, the newest complete checkpoint"
        ) from e
    _maybe_pause(root, "before_prune", step)
    if keep_last > 0:
        for _, old in list_checkpoints(root)[:-keep_last]:
            if old == final:
                continue
            trash = root / f".del-{old.name}-{os.getpid()}"
            os.replace(old, trash)  # rename first: a half-deleted dir never looks like a checkpoint
            shutil.rmtree(trash, ignore_errors=True)
        _fsync_dir(root)
    return final


def _write_files(tmp: Path, step: int, model: nn.Module, state: dict[str, Any],
                 extra_weights: dict[str, dict[str, torch.Tensor]]) -> None:
    """Write the weight and state files, then ``meta.json`` (last) into ``tmp``, all fsynced."""
    files = []
    save_model(model, str(tmp / "model.safetensors"), metadata={"step": str(step)})
    files.append("model.safetensors")
    _maybe_pause(tmp.parent, "after_model", step)
    for key, tensors in extra_weights.items():
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp / f"{key}.safetensors"))
        files.append(f"{key}.safetensors")
    torch.save(state, tmp / "state.pt")
    files.append("state.pt")
    meta = {"format": FORMAT_VERSION, "step": int(step), "files": {}}
    for fname in files:
        _fsync_file(tmp / fname)
        meta["files"][fname] = {"bytes": (tmp / fname).stat().st_size, "sha256": _sha256(tmp / fname)}
    _maybe_pause(tmp.parent, "before_meta", step)
    write_text_atomic(tmp / "meta.json", json.dumps(meta, indent=1))
    _fsync_dir(tmp)


def _newest_name(root: Path) -> str:
    found = list_checkpoints(root)
    return found[-1][1].name if found else "none"


def verify_checkpoint(path: str | Path, check_hash: bool = True) -> dict[str, Any]:
    """Check ``path`` against its ``meta.json``; return the meta or raise :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path}")
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise CheckpointError(f"incomplete checkpoint (no meta.json): {meta_path}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        entries = meta["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"corrupt checkpoint metadata file: {meta_path} ({e})") from e
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"unsupported checkpoint format {meta.get('format')!r} in {meta_path}")
    for fname, info in entries.items():
        f = path / fname
        if not f.is_file():
            raise CheckpointError(f"checkpoint file missing: {f}")
        size = f.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(f"checkpoint file truncated or altered: {f} ({size} bytes, expected {info['bytes']})")
        if check_hash and _sha256(f) != info["sha256"]:
            raise CheckpointError(f"checkpoint file corrupt (sha256 mismatch): {f}")
    return meta


def find_latest_checkpoint(root: str | Path, check_hash: bool = True,
                           warn: Optional[Callable[[str], None]] = None) -> Optional[Path]:
    """Newest checkpoint under ``root`` that passes :func:`verify_checkpoint`, or None.

    Every newer checkpoint that fails is reported through ``warn`` (default: this module's
    logger), naming the bad file and the checkpoint used instead."""
    warn = warn or log.warning
    skipped = []
    for step, path in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(path, check_hash=check_hash)
        except CheckpointError as e:
            skipped.append(path.name)
            warn(f"skipping unusable checkpoint {path.name}: {e}")
            continue
        if skipped:
            warn(f"using {path.name}, the newest checkpoint that verifies, instead of {', '.join(skipped)}")
        return path
    return None


def load_state(path: str | Path) -> dict[str, Any]:
    """Load ``state.pt`` of checkpoint ``path`` with ``weights_only=True``."""
    f = Path(path) / "state.pt"
    if not f.is_file():
        raise CheckpointError(f"checkpoint file missing: {f}")
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/corrupt/unsafe files
        raise CheckpointError(f"cannot load checkpoint state file {describe_torch_load_error(f, e)}") from e


def describe_torch_load_error(path: str | Path, err: BaseException) -> str:
    """``"<path>: <what went wrong>"`` for a failed ``torch.load(path, weights_only=True)``.

    torch's weights-only unpickler refuses any pickle that needs more than tensors and plain
    containers, which is what a file crafted to run code needs. Say that in one line, instead of
    torch's paragraph, which suggests retrying with ``weights_only=False``: the one thing not to
    do with a file of unknown origin."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and "WeightsUnpickler error" in text:
        glob = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if glob:
            return (f"{path}: refused: loading it would call or import {glob.group(1)}, i.e. run code, so it was "
                    "not loaded (fibervl unpickles only tensors and plain containers, weights_only=True). "
                    "Re-save the weights as a dict of tensors or as safetensors from a copy you trust")
        op = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        return (f"{path}: not readable as plain tensors with weights_only=True ({op.group(1).strip() if op else 'refused'}): "
                "a corrupt file, not a torch checkpoint, or a pickle that needs code to load; it was not loaded")
    if isinstance(err, EOFError):
        return f"{path}: the file ends early (empty or truncated)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{path}: {type(err).__name__}: {first}"


def load_model_weights(path: str | Path, model: nn.Module, strict: bool = True) -> None:
    """Load ``model.safetensors`` of checkpoint ``path`` into ``model`` (in place)."""
    f = Path(path) / "model.safetensors"
    if not f.is_file():
        raise CheckpointError(f"checkpoint file missing: {f}")
    try:
        missing, unexpected = load_model(model, str(f), strict=False)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot load checkpoint weights file {f}: {e}") from e
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"weights in {f} do not match the model: missing {sorted(missing)[:10]}, unexpected {sorted(unexpected)[:10]}"
        )


def load_weights_file(path: str | Path, name: str) -> dict[str, torch.Tensor]:
    """Load ``<name>.safetensors`` of checkpoint ``path`` as a CPU state dict."""
    f = Path(path) / f"{name}.safetensors"
    if not f.is_file():
        raise CheckpointError(f"checkpoint file missing: {f}")
    try:
        return load_file(str(f), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot load checkpoint weights file {f}: {e}") from e

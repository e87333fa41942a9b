"""Pieces every recipe shares: pair batches, run directories, the final model export (with the
tokenizer, so that ``run_dir/model`` is self-contained)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch

from ..data import Collator, Tokenizer
from ..engine import distributed as D


def stable_id(value) -> int:
    """An int for any image id, equal on every process (Python's str hash is salted per process)."""
    return value if isinstance(value, int) else zlib.crc32(str(value).encode())


class PairCollator:
    """ProcessedSamples -> the dict the pre-training tasks take (tensors only, so the engine can
    move it to any device): images [B, 3, H, W], input_ids / attention_mask [B, T], image_ids [B]."""

    def __init__(self, tokenizer: Tokenizer, max_length: int) -> None:
        self.collate = Collator(tokenizer, max_length=max_length)

    def __call__(self, items) -> dict[str, torch.Tensor]:
        batch = self.collate(items)
        return {
            "images": batch.pixel_values,
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "image_ids": torch.tensor([stable_id(s.image_id) for s in batch.samples], dtype=torch.long),
        }


def export_model(model, run_dir: str | Path, metrics: dict | None = None, tokenizer: Tokenizer | None = None) -> Path:
    """Write ``run_dir/model`` (config.json + model.safetensors, and ``tokenizer/`` when a
    tokenizer is given, see :func:`model_tokenizer`) and ``run_dir/metrics.json`` on rank 0."""
    out = Path(run_dir) / "model"
    if D.get_rank() == 0:
        model.save_pretrained(out)
        if tokenizer is not None:
            tokenizer.save(out / "tokenizer")
        if metrics is not None:
            (Path(run_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    D.barrier()
    return out


def model_tokenizer(model_dir: str | Path, fallback: str | Path | None = None) -> Tokenizer:
    """The tokenizer exported with a model (``MODEL_DIR/tokenizer``), else ``fallback``."""
    own = Path(model_dir) / "tokenizer"
    if own.exists():
        return Tokenizer.from_pretrained(own)
    if fallback is None:
        raise FileNotFoundError(f"{model_dir} has no tokenizer/ directory; give the data set's tokenizer "
                                "(data.root=DIR or data.tokenizer=PATH)")
    return Tokenizer.from_pretrained(fallback)

"""Uni-modal initialisation: Hugging Face RoBERTa into the text encoder, Microsoft Swin into the image encoder.

Both are strict: every source key is renamed or dropped for a stated reason, and every backbone
weight of the fibervl model must be filled, except the fusion modules (``.i2t`` / ``.t2i``),
which these checkpoints cannot have and which start at their initialisation (alpha = 0).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..modeling.pretrained import read_weights
from ..modeling.swin import resize_relative_position_table
from .common import ConversionError, KeyMapper, load_torch_checkpoint

_ROBERTA_RULES = [
    (r"embeddings\.(word_embeddings|position_embeddings|token_type_embeddings)\.weight", r"text.embeddings.\1.weight"),
    (r"embeddings\.LayerNorm\.(weight|bias)", r"text.embeddings.norm.\1"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)", r"text.layers.\1.attention.\2.\3"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"text.layers.\1.attention.out.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.(weight|bias)", r"text.layers.\1.attention_norm.\2"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"text.layers.\1.intermediate.\2"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"text.layers.\1.output.\2"),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.(weight|bias)", r"text.layers.\1.output_norm.\2"),
]
_ROBERTA_DROPS = [
    (r"embeddings\.(position_ids|token_type_ids)", "structural buffer"),
    (r"pooler\..*", "FIBER does not use RoBERTa's pooler"),
    (r"lm_head\..*", "FIBER's MLM head is trained from scratch, as in the official recipe"),
]

_SWIN_RULES = [
    (r"patch_embed\.(proj|norm)\.(weight|bias)", r"vision.patch_embed.\1.\2"),
    (r"layers\.(\d+)\.blocks\.(\d+)\.(norm1|norm2|mlp\.fc1|mlp\.fc2|attn\.qkv|attn\.proj)\.(weight|bias)",
     r"vision.stages.\1.blocks.\2.\3.\4"),
    (r"layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table", r"vision.stages.\1.blocks.\2.attn.relative_position_bias_table"),
    (r"layers\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)", r"vision.stages.\1.downsample.\2.\3"),
    (r"norm\.(weight|bias)", r"vision.norm.\1"),
]
_SWIN_DROPS = [
    (r".*relative_position_index|.*attn_mask", "structural buffer, rebuilt from the window size"),
    (r"head\.(weight|bias)", "ImageNet classifier, not part of the backbone"),
]

# Weights no uni-modal checkpoint can hold: fusion modules and the detection feature norms.
_NEW_WEIGHTS = re.compile(r".*\.(i2t|t2i)\..*|vision\.feature_norms\..*")


def _read_state(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin inside")
    if path.suffix == ".safetensors":
        return read_weights(path)
    return load_torch_checkpoint(path, nested_keys=("model", "state_dict"))


def _strip_prefix(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        out[key] = value
    return out


def _load_part(model: nn.Module, converted: dict[str, torch.Tensor], prefix: str, source: str) -> list[str]:
    """Copy ``converted`` into the model's ``prefix`` keys; every non-fusion key must be filled.

    Returns the model keys left at initialisation (fusion modules, detection feature norms).
    """
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    unknown = sorted(set(converted) - set(expected))
    missing = sorted(k for k in expected if k not in converted and not _NEW_WEIGHTS.fullmatch(k))
    wrong = [f"{k}: source {tuple(v.shape)}, model {tuple(expected[k].shape)}"
             for k, v in converted.items() if k in expected and v.shape != expected[k].shape]
    if unknown or missing or wrong:
        raise ConversionError(
            f"{source} does not fit the model: unknown {unknown[:8]}, missing {missing[:8]}, shape mismatches {wrong[:8]}"
        )
    with torch.no_grad():
        params = dict(model.state_dict(keep_vars=True))
        for key, value in converted.items():
            params[key].copy_(value)
    return sorted(k for k in expected if k not in converted)


def load_roberta(model: nn.Module, path: str | Path) -> tuple[list[str], dict[str, str]]:
    """Fill ``model.text`` from Hugging Face RoBERTa weights (file or directory).

    Returns (model keys left at initialisation, {dropped source key: reason}).
    """
    state = _strip_prefix(_read_state(path), ("roberta.", "model."))
    converted, dropped = KeyMapper(_ROBERTA_RULES, _ROBERTA_DROPS).apply(state)
    return _load_part(model, converted, "text.", str(path)), dropped


def load_swin(model: nn.Module, path: str | Path) -> tuple[list[str], dict[str, str]]:
    """Fill ``model.vision`` from a Microsoft Swin ImageNet checkpoint (``{"model": state_dict}``).

    Relative-position tables are resized bicubically when the window size differs.
    """
    state = _strip_prefix(_read_state(path), ("module.", "backbone."))
    converted, dropped = KeyMapper(_SWIN_RULES, _SWIN_DROPS).apply(state)
    expected = model.state_dict()
    for key, value in converted.items():
        if key.endswith("relative_position_bias_table") and key in expected and value.shape != expected[key].shape:
            window = int(round(expected[key].shape[0] ** 0.5) + 1) // 2
            converted[key] = resize_relative_position_table(value, window)
    if "vision.norm.weight" in converted and "vision.norm.weight" not in expected:
        converted.pop("vision.norm.weight"), converted.pop("vision.norm.bias", None)
        dropped["norm.weight"] = dropped["norm.bias"] = "this model has no final Swin norm"
    return _load_part(model, converted, "vision.", str(path)), dropped

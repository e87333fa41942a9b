"""Convert the backbone of an official FIBER fine-grained checkpoint (GLIP-style detector).

The checkpoint is ``{"model": state_dict, "optimizer", ...}``; keys may carry ``module.``. Its
fusion backbone uses the same names as the coarse model under other prefixes, so the coarse
rules serve once the prefixes are swapped:

- ``fusion_backbone.backbone.body.*``            -> ``vit_model.*`` (Swin, fusion "v2")
- ``fusion_backbone.backbone.body.norm{1,2,3}``  -> ``vision.feature_norms.{1,2,3}`` (FPN inputs)
- ``fusion_backbone.language_backbone.body.model.*`` -> ``text_transformer.*``

The detection neck and head (``fusion_backbone.backbone.fpn.*``, ``rpn.*``) go through
:func:`fibervl.convert.official_fine_head.convert_official_fine_head` into ``detector.*``.
"""

from __future__ import annotations

import dataclasses
import re

import torch

from pathlib import Path

from ..config import DetectionConfig, FiberConfig, FusionConfig, get_preset
from ..modeling.fiber import FiberModel
from ..errors import CheckpointError
from ..modeling.pretrained import load_state_strict
from .common import ConversionError, KeyMapper
from .common import load_torch_checkpoint
from .official_coarse import _DROPS, _RULES, infer_config
from .official_fine_head import convert_official_fine_head

BODY = "fusion_backbone.backbone.body."
LANGUAGE = "fusion_backbone.language_backbone.body.model."
HEAD_PREFIXES = ("fusion_backbone.backbone.fpn.", "rpn.")


def split_official_fine(state: dict[str, torch.Tensor]):
    """-> (backbone keys renamed to the coarse layout, feature norms, detection keys, unknown keys)."""
    backbone, norms, detection, unknown = {}, {}, {}, []
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key.startswith(BODY):
            rest = key[len(BODY):]
            if m := re.fullmatch(r"norm(\d+)\.(weight|bias)", rest):
                norms[f"vision.feature_norms.{m.group(1)}.{m.group(2)}"] = value
            else:
                backbone["vit_model." + rest] = value
        elif key.startswith(LANGUAGE):
            backbone["text_transformer." + key[len(LANGUAGE):]] = value
        elif key.startswith(HEAD_PREFIXES):
            detection[key] = value
        else:
            unknown.append(key)
    return backbone, norms, detection, unknown


def detection_config(detection: dict[str, torch.Tensor]) -> DetectionConfig | None:
    if not detection:
        return None
    blocks = {int(m.group(1)) for k in detection if (m := re.match(r"rpn\.head\.dyhead_tower\.(\d+)\.", k))}
    channels = detection["rpn.head.bbox_pred.weight"].shape[1]
    # the official input sizes (800 / 1333, multi-scale 480..800) come with the preset
    return dataclasses.replace(get_preset("fiber-base-fine").detection, channels=channels, num_blocks=len(blocks))


def fine_backbone_config(backbone: dict[str, torch.Tensor], feature_norms: tuple[int, ...], image_size: int) -> FiberConfig:
    coarse = infer_config(backbone, image_size)
    base = get_preset("fiber-base-fine")
    vision = coarse.vision
    vision.window_size = base.vision.window_size
    vision.drop_path_rate = base.vision.drop_path_rate
    vision.single_window_no_shift = False
    vision.final_norm = "vit_model.norm.weight" in backbone
    vision.feature_norms = feature_norms
    text = coarse.text
    text.max_text_len = base.text.max_text_len
    return FiberConfig(
        name="fiber-base-fine-official", vision=vision, text=text,
        fusion=FusionConfig(num_layers=coarse.fusion.num_layers, i2t_query_norm=coarse.fusion.i2t_query_norm,
                            skip_last_text_norm=False),
        hidden_size=coarse.hidden_size,
        heads=(),
    )


def convert_official_fine_state(state: dict[str, torch.Tensor], image_size: int = 800):
    """Official fine-grained state dict -> (FiberModel with ``detector``, {dropped key: reason})."""
    backbone, norms, detection, unknown = split_official_fine(state)
    if unknown:
        raise ConversionError(f"unknown source key(s) ({len(unknown)}): {', '.join(unknown[:10])}")
    if not backbone:
        raise ConversionError("no fusion_backbone.* keys: not an official FIBER fine-grained checkpoint")
    feature_norms = tuple(sorted(int(k.split(".")[2]) for k in norms if k.endswith(".weight")))
    config = fine_backbone_config(backbone, feature_norms, image_size)
    config.detection = detection_config(detection)
    model = FiberModel(config)
    converted, dropped = KeyMapper(_RULES, _DROPS).apply(backbone)
    converted.update(norms)
    if detection:
        try:
            head, head_dropped = convert_official_fine_head(detection)
        except KeyError as err:
            raise ConversionError(str(err.args[0])) from None
        converted.update({f"detector.{k}": v for k, v in head.items()})
        dropped.update(dict(item.split(": ", 1) for item in head_dropped))
    try:
        load_state_strict(model, {k: v.float() for k, v in converted.items()}, "converted official fine-grained checkpoint")
    except CheckpointError as err:
        raise ConversionError(str(err)) from None
    return model, dropped


def convert_official_fine(src: str | Path, dst: str | Path | None = None, image_size: int = 800):
    """Read an official fine-grained checkpoint (``{"model": ...}``), convert, optionally save."""
    state = load_torch_checkpoint(src, nested_keys=("model",))
    model, dropped = convert_official_fine_state(state, image_size)
    if dst is not None:
        model.save_pretrained(dst)
    return model, dropped

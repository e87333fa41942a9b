"""Convert the FPN and grounding-head part of an official fine-grained FIBER state_dict.

Official keys (``fine_keys.json``) -> keys of :class:`fibervl.modeling.detection.FPN` held as ``fpn.``
and :class:`fibervl.modeling.detection.GroundingHead` held as ``head.`` (the layout of
:class:`fibervl.modeling.detection.GroundingDetector`):

==============================================================  =============================================
official                                                        fibervl
==============================================================  =============================================
fusion_backbone.backbone.fpn.fpn_inner{2,3,4}.*                 fpn.inner.{0,1,2}.*
fusion_backbone.backbone.fpn.fpn_layer{2,3,4}.*                 fpn.layer.{0,1,2}.*
fusion_backbone.backbone.fpn.top_blocks.p{6,7}.*                fpn.p{6,7}.*
rpn.head.dyhead_tower.N.offset.*                                head.tower.blocks.N.offset.*
rpn.head.dyhead_tower.N.DyConv.0.{conv,bn}.*                    head.tower.blocks.N.conv_from_coarser.{conv,norm}.*
rpn.head.dyhead_tower.N.DyConv.1.{conv,bn}.*                    head.tower.blocks.N.conv_same.{conv,norm}.*
rpn.head.dyhead_tower.N.DyConv.2.{conv,bn}.*                    head.tower.blocks.N.conv_from_finer.{conv,norm}.*
rpn.head.dyhead_tower.N.AttnConv.1.*                            head.tower.blocks.N.scale_attn.*
rpn.head.dyhead_tower.N.relu.fc.{0,2}.*                         head.tower.blocks.N.task_attn.{fc1,fc2}.*
rpn.head.{bbox_pred,centerness}.*                               head.{bbox_pred,centerness}.*
rpn.head.scales.L.scale                                         head.scales.L.scale
rpn.head.dot_product_projection_text.*                          head.token_proj.*
rpn.head.{log_scale,bias_lang,bias0}                            head.{log_scale,bias_lang,bias0}
==============================================================  =============================================

Deliberately dropped (returned with the reason):

* ``rpn.head.cls_logits.*`` — the 80-class conv of the non-grounding path. With the dot-product token
  loss the official model multiplies its loss by 0 and the post-processor reads only its channel
  count (the number of classes now comes from the label -> token map), so no output depends on it.
* ``rpn.anchor_generator.cell_anchors.*`` — structural anchor templates, recomputed from strides and
  sizes by :class:`fibervl.modeling.detection.AnchorGenerator`.

Every other key under ``fusion_backbone.backbone.fpn.`` or ``rpn.`` raises ``KeyError`` naming it
(e.g. ``rpn.head.token_logits`` of another head config); keys outside those prefixes belong to the
backbone converter and are ignored. A key the modules need but the input lacks also raises.
"""

from __future__ import annotations

import re

from torch import Tensor

__all__ = ["convert_official_fine_head", "FPN_PREFIX", "HEAD_PREFIX"]

FPN_PREFIX = "fusion_backbone.backbone.fpn."
HEAD_PREFIX = "rpn."

_DYCONV_NAMES = {"0": "conv_from_coarser", "1": "conv_same", "2": "conv_from_finer"}

_DROPPED = [
    (re.compile(r"rpn\.head\.cls_logits\.(weight|bias)"),
     "unused 80-class classifier: the grounding path ignores it (loss x 0, post-processor reads only its width)"),
    (re.compile(r"rpn\.anchor_generator\.cell_anchors\.\d+"),
     "structural anchor template buffer, recomputed by AnchorGenerator"),
]

_RULES: list[tuple[re.Pattern[str], object]] = [
    (re.compile(r"fusion_backbone\.backbone\.fpn\.fpn_inner([234])\.(weight|bias)"),
     lambda m: f"fpn.inner.{int(m[1]) - 2}.{m[2]}"),
    (re.compile(r"fusion_backbone\.backbone\.fpn\.fpn_layer([234])\.(weight|bias)"),
     lambda m: f"fpn.layer.{int(m[1]) - 2}.{m[2]}"),
    (re.compile(r"fusion_backbone\.backbone\.fpn\.top_blocks\.(p6|p7)\.(weight|bias)"),
     lambda m: f"fpn.{m[1]}.{m[2]}"),
    (re.compile(r"rpn\.head\.dyhead_tower\.(\d+)\.offset\.(weight|bias)"),
     lambda m: f"head.tower.blocks.{m[1]}.offset.{m[2]}"),
    (re.compile(r"rpn\.head\.dyhead_tower\.(\d+)\.DyConv\.([012])\.conv\.(weight|bias)"),
     lambda m: f"head.tower.blocks.{m[1]}.{_DYCONV_NAMES[m[2]]}.conv.{m[3]}"),
    (re.compile(r"rpn\.head\.dyhead_tower\.(\d+)\.DyConv\.([012])\.bn\.(weight|bias)"),
     lambda m: f"head.tower.blocks.{m[1]}.{_DYCONV_NAMES[m[2]]}.norm.{m[3]}"),
    (re.compile(r"rpn\.head\.dyhead_tower\.(\d+)\.AttnConv\.1\.(weight|bias)"),
     lambda m: f"head.tower.blocks.{m[1]}.scale_attn.{m[2]}"),
    (re.compile(r"rpn\.head\.dyhead_tower\.(\d+)\.relu\.fc\.([02])\.(weight|bias)"),
     lambda m: f"head.tower.blocks.{m[1]}.task_attn.{'fc1' if m[2] == '0' else 'fc2'}.{m[3]}"),
    (re.compile(r"rpn\.head\.(bbox_pred|centerness)\.(weight|bias)"), lambda m: f"head.{m[1]}.{m[2]}"),
    (re.compile(r"rpn\.head\.scales\.(\d+)\.scale"), lambda m: f"head.scales.{m[1]}.scale"),
    (re.compile(r"rpn\.head\.dot_product_projection_text\.(weight|bias)"), lambda m: f"head.token_proj.{m[1]}"),
    (re.compile(r"rpn\.head\.(log_scale|bias_lang|bias0)"), lambda m: f"head.{m[1]}"),
]


def _expected_keys(num_blocks: int, num_levels: int) -> set[str]:
    """Parameter names of FPN (as ``fpn.``) + GroundingHead (as ``head.``) for these sizes."""
    from fibervl.modeling.detection.fpn import FPN
    from fibervl.modeling.detection.head import GroundingHead

    # Key names do not depend on widths, so a tiny instance is enough and stays in sync with the modules.
    fpn = FPN((16, 16, 16), 16)
    head = GroundingHead(channels=16, text_dim=4, num_blocks=num_blocks, num_levels=num_levels)
    return {f"fpn.{k}" for k in fpn.state_dict()} | {f"head.{k}" for k in head.state_dict()}


def convert_official_fine_head(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Map the official FPN + ``rpn.`` keys of ``state`` to fibervl names.

    Args:
        state: an official fine-grained state_dict (other keys are ignored).

    Returns:
        ``(converted, dropped)``: ``converted`` maps ``fpn.*`` / ``head.*`` names to the same tensors;
        ``dropped`` lists ``"<official key>: <reason>"`` for every deliberately dropped key present.

    Raises:
        KeyError: an unknown key under the two prefixes, or a key the modules need that is missing.
    """
    converted: dict[str, Tensor] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    for key, value in state.items():
        if not (key.startswith(FPN_PREFIX) or key.startswith(HEAD_PREFIX)):
            continue
        reason = next((r for pat, r in _DROPPED if pat.fullmatch(key)), None)
        if reason is not None:
            dropped.append(f"{key}: {reason}")
            continue
        for pat, fn in _RULES:
            m = pat.fullmatch(key)
            if m:
                new = fn(m)
                if new in converted:
                    raise KeyError(f"two official keys map to {new!r} (second: {key!r})")
                converted[new] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"unknown official fine-head key(s), no mapping defined: {unknown}")

    block_ids = {int(k.split(".")[3]) for k in converted if k.startswith("head.tower.blocks.")}
    level_ids = {int(k.split(".")[2]) for k in converted if k.startswith("head.scales.")}
    num_blocks = max(block_ids) + 1 if block_ids else 0
    num_levels = max(level_ids) + 1 if level_ids else 0
    if num_blocks == 0 or num_levels == 0:
        raise KeyError(
            f"state has no DyHead tower or scale keys under {HEAD_PREFIX!r}; not an official fine-grained head"
        )
    expected = _expected_keys(num_blocks, num_levels)
    missing = sorted(expected - converted.keys())
    if missing:
        raise KeyError(f"official state lacks keys needed by the fine head (fibervl names): {missing}")
    extra = sorted(converted.keys() - expected)
    if extra:  # cannot happen unless the rules and the modules disagree
        raise KeyError(f"converted keys that the modules do not have: {extra}")
    return converted, dropped

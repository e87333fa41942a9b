"""Convert an official FIBER coarse-grained checkpoint (Lightning ``.ckpt``) to fibervl.

Strict: every official key is either renamed by one rule below or dropped for a stated reason;
any other key is an error naming it, and a key the fibervl model needs but the checkpoint lacks
is an error too (raised by :func:`fibervl.modeling.pretrained.load_state_strict`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..config import FiberConfig, FusionConfig, SwinConfig, TextConfig
from ..modeling.fiber import FiberModel
from ..errors import CheckpointError
from ..modeling.pretrained import load_state_strict
from ..modeling.swin import resize_relative_position_table
from .common import ConversionError, KeyMapper, load_torch_checkpoint

# Official -> fibervl renames, tried in order. Groups are carried into the replacement.
_RULES: list[tuple[str, str]] = [
    (r"vit_model\.patch_embed\.(proj|norm)\.(weight|bias)", r"vision.patch_embed.\1.\2"),
    (r"vit_model\.layers\.(\d+)\.blocks\.(\d+)\.(norm1|norm2|mlp\.fc1|mlp\.fc2|attn\.qkv|attn\.proj)\.(weight|bias)",
     r"vision.stages.\1.blocks.\2.\3.\4"),
    (r"vit_model\.layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table",
     r"vision.stages.\1.blocks.\2.attn.relative_position_bias_table"),
    (r"vit_model\.layers\.(\d+)\.blocks\.(\d+)\.attn\.alpha_i2t", r"vision.stages.\1.blocks.\2.i2t.alpha"),
    (r"vit_model\.layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv_text_i2t\.(weight|bias)", r"vision.stages.\1.blocks.\2.i2t.text_kv.\3"),
    (r"vit_model\.layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv_i2t\.(weight|bias)", r"vision.stages.\1.blocks.\2.i2t.query.\3"),
    (r"vit_model\.layers\.(\d+)\.blocks\.(\d+)\.attn\.proj_i2t\.(weight|bias)", r"vision.stages.\1.blocks.\2.i2t.out.\3"),
    (r"vit_model\.layers\.(\d+)\.blocks\.(\d+)\.attn\.norm_i2t_i\.(weight|bias)", r"vision.stages.\1.blocks.\2.i2t.query_norm.\3"),
    (r"vit_model\.layers\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)", r"vision.stages.\1.downsample.\2.\3"),
    (r"vit_model\.norm\.(weight|bias)", r"vision.norm.\1"),
    (r"text_transformer\.embeddings\.(word_embeddings|position_embeddings|token_type_embeddings)\.weight",
     r"text.embeddings.\1.weight"),
    (r"text_transformer\.embeddings\.LayerNorm\.(weight|bias)", r"text.embeddings.norm.\1"),
    (r"text_transformer\.encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)",
     r"text.layers.\1.attention.\2.\3"),
    (r"text_transformer\.encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"text.layers.\1.attention.out.\2"),
    (r"text_transformer\.encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.(weight|bias)", r"text.layers.\1.attention_norm.\2"),
    (r"text_transformer\.encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"text.layers.\1.intermediate.\2"),
    (r"text_transformer\.encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"text.layers.\1.output.\2"),
    (r"text_transformer\.encoder\.layer\.(\d+)\.output\.LayerNorm\.(weight|bias)", r"text.layers.\1.output_norm.\2"),
    (r"text_transformer\.encoder\.layer\.(\d+)\.alpha_t2i", r"text.layers.\1.t2i.alpha"),
    (r"text_transformer\.encoder\.layer\.(\d+)\.crossattention_t2i\.self\.(query|key|value)\.(weight|bias)",
     r"text.layers.\1.t2i.\2.\3"),
    (r"text_transformer\.encoder\.layer\.(\d+)\.crossattention_t2i\.output\.dense\.(weight|bias)", r"text.layers.\1.t2i.out.\2"),
    (r"cross_modal_(text|image)_transform\.(weight|bias)", r"cross_modal.\1_transform.\2"),
    (r"cross_modal_(text|image)_transform_itc\.(weight|bias)", r"cross_modal.itc_\1_transform.\2"),
    (r"cross_modal_(text|image)_pooler\.dense\.(weight|bias)", r"cross_modal.\1_pooler.dense.\2"),
    (r"cross_modal_(text|image)_pooler_itc\.dense\.(weight|bias)", r"cross_modal.itc_\1_pooler.dense.\2"),
    (r"cross_modal_att_layers\.(\d+)\.(weight|bias)", r"cross_modal.caption_image_proj.\1.\2"),
    (r"mlm_score\.transform\.dense\.(weight|bias)", r"heads.mlm.dense.\1"),
    (r"mlm_score\.transform\.LayerNorm\.(weight|bias)", r"heads.mlm.norm.\1"),
    (r"mlm_score\.decoder\.weight", r"heads.mlm.decoder.weight"),
    (r"mlm_score\.bias", r"heads.mlm.bias"),
    (r"itm_score\.fc\.(weight|bias)", r"heads.itm.\1"),
    (r"vqa_classifier\.(0|1|3)\.(weight|bias)", r"heads.vqa.\1.\2"),
    (r"nlvr2_classifier\.(0|1|3)\.(weight|bias)", r"heads.nlvr2.\1.\2"),
    (r"temp", r"temperature"),
]

# Keys with no counterpart, and why. Checked before the renames.
_DROPS: list[tuple[str, str]] = [
    (r".*relative_position_index", "structural buffer, rebuilt from the window size"),
    (r".*attn_mask", "structural buffer (shifted-window mask), rebuilt at run time"),
    (r".*position_ids|.*token_type_ids", "structural buffer; positions are computed from the ids"),
    (r"(image|text)_queue|image_input_queue|text_input_queue|text_input_mask_queue|queue_ptr|queue_total",
     "ITC queue state of pre-training, not model weights"),
    (r"text_transformer\.pooler\..*", "never used by the official model"),
    (r"text_transformer\.encoder\.layer\.\d+\.crossattention_t2i\.output\.LayerNorm\..*",
     "exists in the official model but is never applied"),
    (r"rank_output\.(weight|bias)", "tied to row 1 of itm_score.fc (checked equal)"),
]


def infer_config(state: dict[str, torch.Tensor], image_size: int = 384, text_head_dim: int = 64) -> FiberConfig:
    """Rebuild the architecture from the official key names and shapes.

    The text head count is not recorded in a state dict; RoBERTa's head width (64) is assumed.
    """
    def has(pattern: str) -> list[re.Match]:
        return [m for k in state if (m := re.fullmatch(pattern, k))]

    depths = []
    for s in range(8):
        blocks = {int(m.group(1)) for m in has(rf"vit_model\.layers\.{s}\.blocks\.(\d+)\.norm1\.weight")}
        if not blocks:
            break
        depths.append(max(blocks) + 1)
    if not depths:
        raise ConversionError("no Swin blocks (vit_model.layers.*) found: not an official FIBER coarse checkpoint")
    heads = tuple(
        state[f"vit_model.layers.{s}.blocks.0.attn.relative_position_bias_table"].shape[1] for s in range(len(depths))
    )
    embed_dim = state["vit_model.patch_embed.proj.weight"].shape[0]
    patch = state["vit_model.patch_embed.proj.weight"].shape[-1]
    fused = has(r"vit_model\.layers\.\d+\.blocks\.\d+\.attn\.alpha_i2t")
    text_layers = 1 + max(int(m.group(1)) for m in has(r"text_transformer\.encoder\.layer\.(\d+)\.output\.dense\.weight"))
    word = state["text_transformer.embeddings.word_embeddings.weight"]
    head_names = [name for name, key in [
        ("itc", "cross_modal_text_transform_itc.weight"), ("itm", "itm_score.fc.weight"),
        ("mlm", "mlm_score.decoder.weight"), ("vqa", "vqa_classifier.0.weight"),
        ("nlvr2", "nlvr2_classifier.0.weight"), ("caption", "cross_modal_att_layers.0.weight"),
    ] if key in state]
    return FiberConfig(
        name="fiber-base-official",
        vision=SwinConfig(image_size=image_size, patch_size=patch, embed_dim=embed_dim, depths=tuple(depths),
                          num_heads=heads, window_size=None),
        text=TextConfig(
            vocab_size=word.shape[0], hidden_size=word.shape[1], num_layers=text_layers,
            num_heads=max(1, word.shape[1] // text_head_dim),
            intermediate_size=state["text_transformer.encoder.layer.0.intermediate.dense.weight"].shape[0],
            max_position_embeddings=state["text_transformer.embeddings.position_embeddings.weight"].shape[0],
            type_vocab_size=state["text_transformer.embeddings.token_type_embeddings.weight"].shape[0],
            mask_token_id=word.shape[0] - 1,
            max_text_len=min(40, state["text_transformer.embeddings.position_embeddings.weight"].shape[0] - 2),
        ),
        fusion=FusionConfig(num_layers=len(fused), i2t_query_norm=bool(has(r".*norm_i2t_i\.weight"))),
        hidden_size=state["cross_modal_text_transform.weight"].shape[0]
        if "cross_modal_text_transform.weight" in state else word.shape[1],
        heads=tuple(head_names),
        vqa_num_answers=state["vqa_classifier.3.weight"].shape[0] if "vqa" in head_names else 3129,
    )


def convert_official_coarse_state(
    state: dict[str, torch.Tensor], image_size: int = 384, text_head_dim: int = 64
) -> tuple[FiberModel, dict[str, str]]:
    """Official coarse state_dict -> (loaded FiberModel, {dropped official key: reason})."""
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    config = infer_config(state, image_size, text_head_dim)
    model = FiberModel(config)
    expected = model.state_dict()
    mapper = KeyMapper(_RULES, _DROPS)
    converted, dropped = mapper.apply(state)

    # Layers 0..5 carry an alpha_t2i the official model never uses; caption projections of
    # unfused layers likewise. Drop exactly those, and only when the model has no such key.
    for official, ours in list(mapper.renamed.items()):
        if ours not in expected and (re.fullmatch(r"text\.layers\.\d+\.t2i\.alpha", ours)
                                     or ours.startswith("cross_modal.caption_image_proj.")):
            converted.pop(ours)
            dropped[official] = "belongs to a layer the official model never fuses (unused)"

    if "rank_output.weight" in state and "itm_score.fc.weight" in state:
        for part in ("weight", "bias"):
            if not torch.equal(state[f"rank_output.{part}"], state[f"itm_score.fc.{part}"][1:]):
                raise ConversionError(
                    f"rank_output.{part} differs from itm_score.fc.{part}[1:]; this checkpoint trained an untied "
                    "retrieval head, which fibervl's ITM head cannot hold"
                )

    window = config.vision.resolved_window_size
    for key, value in converted.items():
        if key.endswith("relative_position_bias_table") and key in expected and value.shape != expected[key].shape:
            converted[key] = resize_relative_position_table(value, window)
    if "temperature" in converted:
        converted["temperature"] = converted["temperature"].reshape(())
    converted = {k: v.float() if v.is_floating_point() else v for k, v in converted.items()}
    try:
        load_state_strict(model, converted, "converted official checkpoint")
    except CheckpointError as err:
        raise ConversionError(str(err)) from None
    return model, dropped


def convert_official_coarse(src: str | Path, dst: str | Path | None = None, image_size: int = 384,
                            text_head_dim: int = 64):
    """Read ``src`` (Lightning .ckpt or a plain state_dict), convert, optionally save to ``dst``."""
    state = load_torch_checkpoint(src, nested_keys=("state_dict",))
    model, dropped = convert_official_coarse_state(state, image_size, text_head_dim)
    if dst is not None:
        model.save_pretrained(dst)
    return model, dropped

"""Small configs for tests and examples."""

from __future__ import annotations

import dataclasses

from ..config import DetectionConfig, FiberConfig, FusionConfig, SwinConfig, TextConfig


def micro_config(**fusion) -> FiberConfig:
    """A model small enough for unit tests, yet with shifted windows, merging and 2 fused blocks."""
    return FiberConfig(
        name="micro",
        vision=SwinConfig(image_size=64, embed_dim=16, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4), window_size=2,
                          drop_path_rate=0.0),
        text=TextConfig(vocab_size=100, hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64,
                        max_position_embeddings=40, mask_token_id=99, dropout=0.0, max_text_len=16),
        fusion=FusionConfig(num_layers=2, **fusion),
        hidden_size=24,
        vqa_num_answers=7,
    )


def micro_detector_config() -> FiberConfig:
    """:func:`micro_config` as a grounding detector: 128 px, three feature levels, a one-block
    16-channel head, 16-token prompts, no task heads."""
    micro = micro_config()
    return micro.replace(vision=dataclasses.replace(micro.vision, image_size=128, feature_norms=(1, 2, 3)), heads=(),
                         detection=DetectionConfig(channels=16, num_blocks=1, num_groups=4,
                                                   anchor_sizes=(16, 32, 64, 128, 256), max_query_len=16))


def albef_micro_config(**changes):
    """An ALBEF model small enough for unit tests: a 2-block ViT on 64 px (16 patches), 3 text
    layers of which the top 2 fuse, every head, mean text pooling (as albef-tiny)."""
    from ..modeling.albef import AlbefConfig
    from ..modeling.vit import VitConfig

    cfg = AlbefConfig(
        name="albef-micro",
        vision=VitConfig(image_size=64, patch_size=16, width=32, depth=2, num_heads=2),
        text=TextConfig(vocab_size=100, hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64,
                        max_position_embeddings=40, mask_token_id=99, dropout=0.0, max_text_len=16),
        fusion_layers=2, hidden_size=32, embed_dim=24, heads=("itc", "itm", "mlm", "vqa", "nlvr2"),
        vqa_num_answers=7, text_pooling="mean",
    )
    return cfg.replace(**changes)

"""Grounding detector: FPN + DyHead grounding head + ATSS loss + post-processing.

It consumes what the fused backbone produces — three image stage maps (strides 8, 16, 32) and the
text states with their mask — and nothing else, so the backbone can be built elsewhere. Parameter
names are ``fpn.*`` and ``head.*``, the layout produced by
:func:`fibervl.convert.official_fine_head.convert_official_fine_head`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from .anchors import AnchorGenerator
from .fpn import FPN
from .head import GroundingHead, GroundingHeadOutput
from .head_fusion import HeadFusion
from .location import LocationPrior
from .losses import GroundingLoss, GroundingTarget
from .postprocess import Detections, GroundingPostProcessor

__all__ = ["DetectorOutput", "GroundingDetector"]


@dataclass
class DetectorOutput:
    """``head``: per-level head outputs; ``anchors``: per level ``[H_l*W_l, 4]``;
    ``pyramid``: FPN levels ``[B, C, H_l, W_l]`` (P3..P7; after the head fusion, if any)."""

    head: GroundingHeadOutput
    anchors: list[Tensor]
    pyramid: list[Tensor]


class GroundingDetector(nn.Module):
    """Fine-grained FIBER detection part (official defaults; smaller widths for CPU presets).

    Args:
        in_channels: channels of the three backbone stage maps (base: 256, 512, 1024).
        channels: FPN / head width (base 256; e.g. 64 for a tiny CPU model; divisible by ``num_groups``).
        text_dim: text hidden size (768).
        num_blocks: DyHead blocks (6; 0 = none).
        num_groups: GroupNorm groups (16).
        strides, anchor_sizes: per pyramid level (8..128 and 64..1024).
        loss, postprocessor: override the official defaults.
        head_fusion_layers: GLIP-style image-text fusion layers on the pyramid and the text before
            the head (:class:`~.head_fusion.HeadFusion`); 0 (official FIBER) builds none.
        head_fusion_heads, head_fusion_gate_init: their attention heads and initial gates.
        location_prior: add the expression's prior over places to the grounding logits
            (:class:`~.location.LocationPrior`); off in official FIBER.

    ``forward(image_features, text_hidden, text_mask) -> DetectorOutput`` with ``image_features`` a
    list of 3 maps ``[B, in_channels[i], H_i, W_i]``, ``text_hidden [B, T, text_dim]``, ``text_mask
    [B, T]`` (1 = real token). Then ``loss(out, targets, text_mask)`` for training, or
    ``predict(out, image_sizes, positive_map, class_labels)`` for detections.
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (256, 512, 1024),
        channels: int = 256,
        text_dim: int = 768,
        num_blocks: int = 6,
        num_groups: int = 16,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        anchor_sizes: Sequence[float] = (64, 128, 256, 512, 1024),
        loss: GroundingLoss | None = None,
        postprocessor: GroundingPostProcessor | None = None,
        head_fusion_layers: int = 0,
        head_fusion_heads: int = 8,
        head_fusion_gate_init: float = 0.0,
        location_prior: bool = False,
    ) -> None:
        super().__init__()
        if len(strides) != 5:
            raise ValueError(f"the pyramid has 5 levels (P3..P7); got {len(strides)} strides")
        self.fpn = FPN(in_channels, channels)
        self.head = GroundingHead(channels, text_dim, num_blocks, num_levels=5, num_groups=num_groups)
        self.anchor_generator = AnchorGenerator(strides, anchor_sizes)
        self.loss_fn = loss or GroundingLoss()
        self.postprocessor = postprocessor or GroundingPostProcessor()
        # Built last, so that the FPN and head start from the same weights with or without it.
        self.head_fusion = None if head_fusion_layers == 0 else HeadFusion(
            channels, text_dim, head_fusion_layers, head_fusion_heads, head_fusion_gate_init)
        self.location_prior = LocationPrior(text_dim) if location_prior else None

    def forward(self, image_features: Sequence[Tensor], text_hidden: Tensor, text_mask: Tensor) -> DetectorOutput:
        if text_mask.shape != text_hidden.shape[:2]:
            raise ValueError(f"text_mask {tuple(text_mask.shape)} does not match text_hidden {tuple(text_hidden.shape)}")
        pyramid = self.fpn(image_features)
        if self.head_fusion is not None:
            # the fused levels feed the predictors and the anchors; the fused text the token logits
            pyramid, text_hidden = self.head_fusion(pyramid, text_hidden, text_mask)
        # official language_dict_features["embedded"] = hidden * mask
        embedded = text_hidden * text_mask[..., None].to(text_hidden.dtype)
        places = None if self.location_prior is None else self.location_prior(
            text_hidden, text_mask, [tuple(level.shape[-2:]) for level in pyramid])
        head_out = self.head(pyramid, embedded, places)
        return DetectorOutput(head_out, self.anchor_generator(pyramid), pyramid)

    def loss(self, out: DetectorOutput, targets: Sequence[GroundingTarget], text_mask: Tensor,
             loss_fn: GroundingLoss | None = None) -> dict[str, Tensor]:
        """The training losses; ``loss_fn`` replaces the detector's own (the official one), e.g.
        by one with the word-region alignment term."""
        h = out.head
        return (loss_fn or self.loss_fn)(h.bbox_reg, h.centerness, h.dot_product_logits, out.anchors, targets, text_mask)

    def predict(
        self,
        out: DetectorOutput,
        image_sizes: Sequence[tuple[int, int]],
        positive_map: Tensor,
        class_labels: Tensor | None = None,
    ) -> list[Detections]:
        h = out.head
        return self.postprocessor(
            h.bbox_reg, h.centerness, h.dot_product_logits, out.anchors, image_sizes, positive_map, class_labels
        )

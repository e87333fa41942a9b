"""What every model family offers: the protocol tasks, recipes and predictors program against.

Tasks never name a model class. They receive a :class:`VisionLanguageModel` (FIBER, ALBEF or
VLMo, built by :func:`fibervl.modeling.factory.create_model`) and call only what is listed here;
every family is also a ``torch.nn.Module``. Both protocols are ``runtime_checkable``, so the
factory checks that a registered family's model really offers them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol, runtime_checkable

import torch

from ..config import TextConfig

if TYPE_CHECKING:
    from .fiber import FusionOutput


@runtime_checkable
class ModelConfig(Protocol):
    """A family's config dataclass: it round-trips ``config.json`` (``to_dict`` / ``from_dict``)
    and names its family, so that a saved directory finds its class."""

    family: str  # "fiber", "albef", "vlmo": the key of the family registry
    name: str  # the preset it came from ("custom" when built by hand)
    text: TextConfig
    hidden_size: int  # H: width of the fused states the heads read
    heads: tuple[str, ...]
    vqa_num_answers: int

    def replace(self, **changes: Any) -> "ModelConfig": ...

    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig": ...


@runtime_checkable
class VisionLanguageModel(Protocol):
    """The calls tasks make. With the ``itc`` head a model also has ``temperature`` (the learned
    ITC temperature, a scalar Parameter).

    ``image_prefix`` / ``text_prefix`` are what the dual and fused modes compute alike
    (everything below the first fusion layer); passed as ``image_prefix=`` / ``text_prefix=`` to
    ``encode_image``, ``encode_text`` and ``fuse`` they stand for those passes, so a task that
    sees an image or text several times in a step (ITC, ITM pairs, MLM; re-ranking) computes them
    once.
    """

    config: ModelConfig

    def image_prefix(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, ...]: the unfused image passes."""
        ...

    def text_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T] -> [B, T, H_text]: the unfused text layers."""
        ...

    def encode_image(self, images: Optional[torch.Tensor] = None, *,
                     image_prefix: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B, 3, S, S] -> [B, D] L2-normalised (dual encoder, no cross-attention)."""
        ...

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                    text_prefix: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B, T] -> [B, D] L2-normalised (dual encoder, no cross-attention)."""
        ...

    def itc_logits(self, image_embed: torch.Tensor, text_embed: torch.Tensor) -> torch.Tensor:
        """[Bi, D], [Bt, D] -> [Bi, Bt] similarities over the temperature."""
        ...

    def fuse(self, images: Optional[torch.Tensor], input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
             image_prefix: Optional[torch.Tensor] = None, text_prefix: Optional[torch.Tensor] = None) -> FusionOutput:
        """Fusion mode -> FusionOutput: ``.cls_feats`` [B, 2H], ``.text_feats`` [B, T, H]."""
        ...

    def itm_logits(self, cls_feats: torch.Tensor) -> torch.Tensor:
        """[B, 2H] -> [B, 2] (column 1: match)."""
        ...

    def mlm_logits(self, text_feats: torch.Tensor) -> torch.Tensor:
        """[..., H] -> [..., vocab]."""
        ...

    def vqa_logits(self, cls_feats: torch.Tensor) -> torch.Tensor:
        """[B, 2H] -> [B, num_answers]."""
        ...

    def nlvr2_logits(self, cls_left: torch.Tensor, cls_right: torch.Tensor) -> torch.Tensor:
        """[B, 2H], [B, 2H] -> [B, 2]."""
        ...

    def fusion_parameters(self) -> dict[str, int]:
        """Parameter counts of the fusion modules, by kind."""
        ...

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` + ``model.safetensors`` (read back by ``create_model(directory)``)."""
        ...

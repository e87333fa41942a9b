"""Image-only supervised pre-training: which labels (colours, shapes) does an image show?

The FIBER paper starts its coarse-grained stage from an ImageNet-trained Swin; here the tower
starts from scratch, and trained on image-text pairs alone it learns colour at once but shape
only after a long plateau (docs/results.md, issue 31). This task gives the image tower a
supervised stage of its own first: multi-label presence of each label in the image, binary
cross-entropy on a linear head over the pooled unfused image tokens, exactly the features the
dual encoder reads before its ITC projection. The head serves this stage only and is not part of
the exported model (like VLMo's MIM head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pooled_image_features(model, images: torch.Tensor) -> torch.Tensor:
    """[B, 3, S, S] -> [B, C]: the unfused image tokens after the tower's final norm, pooled
    as the model pools them (``config.image_pooling``: per-channel max or mean)."""
    x = model.unfused_image_tokens(images)
    if model.vision.norm is not None:
        x = model.vision.norm(x)
    return x.amax(dim=1) if model.config.image_pooling == "max" else x.mean(dim=1)


class ImageLabelTask(nn.Module):
    """Multi-label classification of ``batch["images"]`` [B, 3, S, S] against
    ``batch["labels"]`` [B, L] (1.0 where the image shows label l, else 0.0).

    Owns the ``head`` (C -> L), C the width of the tower's last stage."""

    def __init__(self, image_dim: int, num_labels: int) -> None:
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"an image-label task needs at least one label, got {num_labels}")
        self.head = nn.Linear(image_dim, num_labels)

    def logits(self, model, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, L] label logits."""
        return self.head(pooled_image_features(model, images)).float()

    def training_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        logits, labels = self.logits(model, batch["images"]), batch["labels"].float()
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        # an image counts as right when every label's presence is predicted right
        exact = ((logits > 0) == (labels > 0.5)).all(dim=1).float().mean()
        return {"loss": loss, "bce": loss.detach(), "exact": exact.detach()}

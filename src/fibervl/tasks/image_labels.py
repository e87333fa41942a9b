"""Image-only supervised pre-training: which labels (colours, shapes) does an image show?

The FIBER paper starts its coarse-grained stage from an ImageNet-trained Swin; here the tower
starts from scratch, and trained on image-text pairs alone it learns colour at once but shape
only after a long plateau (docs/results.md, issue 31). This task gives the image tower a
supervised stage of its own first: multi-label presence of each label in the image, binary
cross-entropy on a linear head over the pooled unfused image tokens, exactly the features the
dual encoder reads before its ITC projection. The head serves this stage only and is not part of
the exported model (like VLMo's MIM head).

With ``token_weight`` > 0 each token of the last stage's grid is also asked which labels it
shows: the labels of the object whose centre lies in its cell, none on a cell no object touches
(cells that hold only part of an object are not scored). The fused layers bind a word to the
token of its object, so that token, not only the pooled image, has to tell its object's shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def image_token_features(model, images: torch.Tensor) -> torch.Tensor:
    """[B, 3, S, S] -> [B, N, C]: the unfused image tokens (last stage's grid, row-major) after
    the tower's final norm."""
    x = model.unfused_image_tokens(images)
    return x if model.vision.norm is None else model.vision.norm(x)


def pool_tokens(model, tokens: torch.Tensor) -> torch.Tensor:
    """[B, N, C] -> [B, C], as the model pools (``config.image_pooling``: per-channel max or mean)."""
    return tokens.amax(dim=1) if model.config.image_pooling == "max" else tokens.mean(dim=1)


def pooled_image_features(model, images: torch.Tensor) -> torch.Tensor:
    """[B, 3, S, S] -> [B, C]: the unfused image tokens after the tower's final norm, pooled
    as the model pools them."""
    return pool_tokens(model, image_token_features(model, images))


class ImageLabelTask(nn.Module):
    """Multi-label classification of ``batch["images"]`` [B, 3, S, S] against
    ``batch["labels"]`` [B, L] (1.0 where the image shows label l, else 0.0); with
    ``token_weight`` > 0 also of each token against ``batch["token_labels"]`` [B, N, L], on the
    tokens ``batch["token_mask"]`` [B, N] (bool) marks, N the last stage's grid cells.

    Owns the ``head`` (C -> L), C the width of the tower's last stage, and with token labels a
    ``token_head`` (C -> L)."""

    def __init__(self, image_dim: int, num_labels: int, token_weight: float = 0.0) -> None:
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"an image-label task needs at least one label, got {num_labels}")
        if isinstance(token_weight, bool) or not token_weight >= 0:
            raise ValueError(f"token_weight must be a number >= 0, got {token_weight!r}")
        self.head = nn.Linear(image_dim, num_labels)
        self.token_weight = float(token_weight)
        self.token_head = nn.Linear(image_dim, num_labels) if token_weight > 0 else None

    def logits(self, model, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, L] label logits."""
        return self.head(pooled_image_features(model, images)).float()

    def training_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        tokens = image_token_features(model, batch["images"])
        logits, labels = self.head(pool_tokens(model, tokens)).float(), batch["labels"].float()
        bce = F.binary_cross_entropy_with_logits(logits, labels)
        # an image counts as right when every label's presence is predicted right
        exact = ((logits > 0) == (labels > 0.5)).all(dim=1).float().mean()
        out = {"bce": bce.detach(), "exact": exact.detach()}
        loss = bce
        if self.token_head is not None:
            if "token_labels" not in batch:
                raise ValueError("token_weight > 0 needs token labels in the batch (fresh scenes with a token grid)")
            mask = batch["token_mask"]
            if mask.shape != tokens.shape[:2]:
                raise ValueError(f"token labels for a grid of {mask.shape[1]} cells; the tower gives {tokens.shape[1]}")
            scored = self.token_head(tokens[mask]).float()
            target = batch["token_labels"][mask].float()
            token_bce = F.binary_cross_entropy_with_logits(scored, target) if len(target) else scored.sum() * 0
            loss = loss + self.token_weight * token_bce
            out["token_bce"] = token_bce.detach()
            out["token_exact"] = ((scored > 0) == (target > 0.5)).all(dim=1).float().mean().detach()
        out["loss"] = loss
        return out

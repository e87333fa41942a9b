"""VLMo stagewise pre-training: which parameters each stage trains, and the two unimodal tasks.

1. ``mim``: image-only masked image modelling. The embeddings of a random 40 % of the patches
   are replaced by a learned mask token; the model predicts each masked patch's pixels,
   normalised per patch (MAE's ``norm_pix_loss`` target). BEiT's discrete visual tokenizer, which
   VLMo uses, cannot be downloaded here; normalised pixels need no tokenizer at all. Trains the
   image embeddings, the shared attention (and its LayerNorm), the V-FFNs and the final norm.
2. ``text``: text-only MLM with the attention and every vision part frozen: only the text
   embeddings, the L-FFNs and the MLM head train (the paper's second stage).
3. ``vl``: ITC + ITM with global hard negatives + MLM on pairs, everything trained: exactly
   :class:`~fibervl.tasks.pretrain_coarse.CoarsePretrainTask`.

Freezing is real: :func:`set_stage_trainable` sets ``requires_grad`` and the engine builds its
optimizer over trainable parameters only, so neither gradients nor weight decay move the rest.
The modality type embedding trains only in ``vl``: it only matters where modalities mix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .objectives import mask_tokens, masked_lm_logits, mlm_loss

STAGES = ("mim", "text", "vl")


def stage_trains(name: str, stage: str) -> bool:
    """Whether parameter ``name`` of a VlmoModel trains in ``stage``."""
    if stage == "vl":
        return True
    # a block parameter is "blocks.<i>.<part>...": part is norm / attention (shared) or experts
    parts = name.split(".")
    block_part = ".".join(parts[2:4]) if parts[0] == "blocks" else ""
    if stage == "mim":
        return (name.startswith(("image_embeddings.", "norm.")) or
                block_part.startswith(("norm.", "attention.")) or block_part == "experts.image")
    if stage == "text":
        return name.startswith(("text_embeddings.", "heads.mlm.")) or block_part == "experts.text"
    raise ValueError(f"unknown VLMo stage {stage!r}; stages: {STAGES}")


def set_stage_trainable(model: nn.Module, stage: str) -> list[str]:
    """Set ``requires_grad`` of every parameter for ``stage``; returns the trainable names."""
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(stage_trains(name, stage))
        if p.requires_grad:
            trainable.append(name)
    return trainable


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, S, S] -> [B, N, patch * patch * C], patches in row-major order (the conv's order)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def random_patch_mask(batch: int, num_patches: int, ratio: float, device=None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, N] bool with exactly ``round(ratio * N)`` (at least 1) True per row, uniformly placed.
    (BEiT masks blocks of patches; uniform masking is the simpler MAE/SimMIM choice.)"""
    k = max(1, round(ratio * num_patches))
    scores = torch.rand(batch, num_patches, generator=generator, device=device)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < k


class MimTask(nn.Module):
    """Masked image modelling on ``batch["images"]`` [B, 3, S, S] (texts ignored).

    Owns the learned ``mask_token`` [H] and the pixel ``head`` (H -> patch * patch * 3); neither
    is part of the exported model (like BEiT's MIM head, they serve this stage only).
    """

    def __init__(self, hidden: int, patch: int, channels: int = 3, mask_ratio: float = 0.4,
                 norm_pix: bool = True) -> None:
        super().__init__()
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {mask_ratio}")
        self.patch, self.mask_ratio, self.norm_pix = patch, mask_ratio, norm_pix
        self.mask_token = nn.Parameter(torch.zeros(hidden))
        nn.init.normal_(self.mask_token, std=0.02)
        self.head = nn.Linear(hidden, patch * patch * channels)

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, N, P] regression targets (per-patch normalised when ``norm_pix``)."""
        t = patchify(images.float(), self.patch)
        if self.norm_pix:
            t = (t - t.mean(dim=-1, keepdim=True)) / (t.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        return t

    def training_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        images = batch["images"]
        n = (images.shape[-1] // self.patch) * (images.shape[-2] // self.patch)
        mask = random_patch_mask(images.shape[0], n, self.mask_ratio, device=images.device)
        states = model.image_states(images, mask, self.mask_token)[:, 1:]  # drop CLS: [B, N, H]
        pred = self.head(states[mask]).float()  # only masked patches: [M, P]
        loss = F.mse_loss(pred, self.targets(images)[mask])
        return {"loss": loss, "mim": loss.detach()}


class TextMlmTask(nn.Module):
    """Text-only MLM on ``batch["input_ids"]`` / ``batch["attention_mask"]`` (images ignored)."""

    def __init__(self, vocab_size: int, mask_token_id: int, special_token_ids: tuple[int, ...],
                 prob: float = 0.15) -> None:
        super().__init__()
        self.vocab_size, self.mask_token_id, self.prob = vocab_size, mask_token_id, prob
        self.register_buffer("special_ids", torch.tensor(sorted(set(special_token_ids)), dtype=torch.long),
                             persistent=False)

    def training_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        masked, labels = mask_tokens(ids, self.mask_token_id, self.vocab_size, attention_mask=mask,
                                     special_tokens_mask=torch.isin(ids, self.special_ids), prob=self.prob)
        logits, targets = masked_lm_logits(model.mlm_logits, model.text_states(masked, mask), labels)
        loss = mlm_loss(logits, targets)
        return {"loss": loss, "mlm": loss.detach(), "mlm_acc": (logits.argmax(-1) == targets).float().mean()}

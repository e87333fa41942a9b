"""Task heads over the fused features. Each takes ``cls_feats`` [B, 2H] or ``text_feats`` [B, T, H]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Pooler(nn.Module):
    """dense + tanh over one vector per example: [B, H] -> [B, H]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x))


class MLPClassifier(nn.Sequential):
    """Linear -> LayerNorm -> GELU -> Linear (the official VQA and NLVR2 heads)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, eps: float) -> None:
        super().__init__(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden, eps=eps), nn.GELU(), nn.Linear(hidden, out_dim))


class MLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder + bias; not tied to the word embeddings (official).

    Also the captioning LM head: logits at position i predict token i + 1.
    """

    def __init__(self, dim: int, vocab_size: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.decoder = nn.Linear(dim, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., H] -> [..., vocab]."""
        return self.decoder(self.norm(F.gelu(self.dense(x)))) + self.bias


class Heads(nn.Module):
    """The task heads a config asks for: any of itm, mlm, vqa, nlvr2."""

    def __init__(self, names: tuple[str, ...], hidden: int, vocab_size: int, vqa_answers: int,
                 eps: float, mlm_eps: float) -> None:
        super().__init__()
        if "itm" in names:
            self.itm = nn.Linear(2 * hidden, 2)
        if "mlm" in names:
            self.mlm = MLMHead(hidden, vocab_size, mlm_eps)
        if "vqa" in names:
            self.vqa = MLPClassifier(2 * hidden, 2 * hidden, vqa_answers, eps)
        if "nlvr2" in names:
            self.nlvr2 = MLPClassifier(4 * hidden, 2 * hidden, 2, eps)

    def get(self, name: str) -> nn.Module:
        head = getattr(self, name, None)
        if head is None:
            raise ValueError(f"this model has no {name!r} head (config.heads lists the heads it was built with)")
        return head


class HeadLogits:
    """The heads of the vision-language model protocol, for any model whose ``self.heads`` is a
    :class:`Heads` (FIBER, ALBEF and VLMo share them; a task never knows which it has)."""

    def itm_logits(self, cls_feats: torch.Tensor) -> torch.Tensor:
        """[B, 2H] -> [B, 2] (column 1 = match; also the retrieval re-ranking score)."""
        return self.heads.get("itm")(cls_feats)

    def mlm_logits(self, text_feats: torch.Tensor) -> torch.Tensor:
        """[..., H] -> [..., vocab]; FIBER's caption LM head too."""
        return self.heads.get("mlm")(text_feats)

    def vqa_logits(self, cls_feats: torch.Tensor) -> torch.Tensor:
        """[B, 2H] -> [B, num_answers] (a classifier over the answer vocabulary)."""
        return self.heads.get("vqa")(cls_feats)

    def nlvr2_logits(self, cls_left: torch.Tensor, cls_right: torch.Tensor) -> torch.Tensor:
        """Two fused passes' cls features [B, 2H] each -> [B, 2]."""
        return self.heads.get("nlvr2")(torch.cat([cls_left, cls_right], dim=-1))

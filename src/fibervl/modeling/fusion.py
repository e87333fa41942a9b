"""Gated cross-attention between the backbones: the heart of FIBER.

Each fused Swin block gets :class:`ImageToTextAttention` (image tokens query the text) and its
paired text layer gets :class:`TextToImageAttention` (text tokens query the image). Both add
``alpha * cross`` to their branch; ``alpha`` starts at ``config.fusion.alpha_init`` (official: 0,
so that a model built on pre-trained unimodal backbones starts equal to them). With 0, a freshly initialised fused model
computes exactly its unimodal backbones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import merge_heads, split_heads


class ImageToTextAttention(nn.Module):
    """Image tokens attend to all text tokens (per token, so windows and shifts do not matter).

    Official names (Swin ``attn``): ``qkv_text_i2t`` -> ``text_kv``, ``qkv_i2t`` -> ``query``,
    ``norm_i2t_i`` -> ``query_norm``, ``proj_i2t`` -> ``out``, ``alpha_i2t`` -> ``alpha``.
    """

    def __init__(self, dim: int, text_dim: int, num_heads: int, query_norm: bool, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query_norm = nn.LayerNorm(dim, eps=eps) if query_norm else nn.Identity()
        self.query = nn.Linear(dim, dim)
        self.text_kv = nn.Linear(text_dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """x: [B, N, C] image tokens (attention-branch output); text: [B, T, Dt];
        text_mask: [B, 1, 1, T] bool. Returns ``alpha * cross`` of shape [B, N, C]."""
        q = split_heads(self.query(self.query_norm(x)), self.num_heads)
        k, v = self.text_kv(text).chunk(2, dim=-1)
        k, v = split_heads(k, self.num_heads), split_heads(v, self.num_heads)
        cross = F.scaled_dot_product_attention(q, k, v, attn_mask=text_mask)
        return self.alpha * self.out(merge_heads(cross))


class TextToImageAttention(nn.Module):
    """Text tokens attend to the whole (unwindowed) image sequence, no mask.

    Official names (``crossattention_t2i``): ``self.query/key/value`` -> ``query/key/value``,
    ``output.dense`` -> ``out``; the layer's ``alpha_t2i`` -> ``alpha``. The official
    ``output.LayerNorm`` is never applied and has no counterpart here.
    """

    def __init__(self, dim: int, image_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(image_dim, dim)
        self.value = nn.Linear(image_dim, dim)
        self.out = nn.Linear(dim, dim)
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """x: [B, T, D] text states (self-attention output); image: [B, N, Ci].
        Returns ``alpha * cross`` of shape [B, T, D]."""
        return self.attend(x, *self.image_kv(image))

    def image_kv(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image [B, N, Ci] -> keys, values [B, heads, N, D/heads]. They depend on the image only,
        so a caption decoder computes them once per image (see ``FiberModel.start_caption``)."""
        return split_heads(self.key(image), self.num_heads), split_heads(self.value(image), self.num_heads)

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x [B, T, D] queries the image keys/values of :meth:`image_kv`. Returns ``alpha * cross``."""
        q = split_heads(self.query(x), self.num_heads)
        cross = F.scaled_dot_product_attention(q, k, v)
        return self.alpha * self.out(merge_heads(cross))


class TextToImageAttentionRecorder:
    """Keeps the text-to-image attention weights ``[B, heads, T, N]`` of every fused text layer
    of a model, in layer order, for each forward pass run inside ``with recorder:`` (cleared on
    entering). The layers run SDPA, which returns no weights, so a hook recomputes them from the
    layer's own query and key projections, in fp32 and with gradients: a loss may train them.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, TextToImageAttention)]
        if not self.layers:
            raise ValueError("the model has no text-to-image attention (no fused text layer)")
        self.maps: list[torch.Tensor] = []
        self._hooks: list = []

    def _record(self, layer: TextToImageAttention, inputs, _output) -> None:
        text, image = inputs
        q = split_heads(layer.query(text), layer.num_heads).float()
        k = split_heads(layer.key(image), layer.num_heads).float()
        self.maps.append(torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1))

    def __enter__(self) -> "TextToImageAttentionRecorder":
        self.maps = []
        self._hooks = [layer.register_forward_hook(self._record) for layer in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

"""RoBERTa-style text encoder whose top layers can attend to the image (text-to-image fusion)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TextConfig
from .fusion import TextToImageAttention
from .layers import merge_heads, split_heads


class BigramEmbeddings(nn.Module):
    """A learned vector for each (previous token, token) pair, hashed into ``buckets`` rows.

    It makes "star" after "red" a token of its own before any layer has composed the two. The rows
    are drawn at std 1, the scale of the normalised embeddings they are added to: drawn small (0 or
    0.02) they leave a fusion trained from scratch unable to bind words to the object they describe,
    drawn at unit scale the random conjunctive signal breaks that symmetry (docs/results.md,
    binding). A plain parameter, so the model's BERT-style init of ``nn.Embedding`` leaves it alone.
    """

    # Odd and larger than any vocabulary, so (previous, token) -> previous * M + token is one-to-one
    # before the modulo.
    MULTIPLIER = 1_000_003

    def __init__(self, buckets: int, dim: int, start_id: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(buckets, dim))
        self.start_id = start_id

    def forward(self, input_ids: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] int64 -> [B, T, D]. ``previous`` [B]: the token before the first of
        these (incremental decoding); None: they start the text (the first has ``start_id`` before it)."""
        if previous is None:
            previous = input_ids.new_full((input_ids.shape[0],), self.start_id)
        before = torch.cat([previous[:, None], input_ids[:, :-1]], dim=1)
        return F.embedding((before * self.MULTIPLIER + input_ids) % self.weight.shape[0], self.weight)


class TextEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, then (``bigram_buckets`` > 0) the
    hashed bigram embeddings, dropout.

    Positions follow fairseq/RoBERTa: real tokens get ``pad_id + 1, pad_id + 2, ...`` and padding
    gets ``pad_id``, whatever the attention mask says.
    """

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.pad_id = cfg.pad_token_id
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bigram = BigramEmbeddings(cfg.bigram_buckets, cfg.hidden_size, cfg.pad_token_id) if cfg.bigram_buckets else None
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, input_ids: torch.Tensor, past_real: torch.Tensor | None = None, previous: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B, T] int64 -> [B, T, D]. Incremental decoding passes what came before these tokens:
        ``past_real`` [B], the real tokens already embedded, so positions continue where the earlier
        call stopped, and ``previous`` [B], the last token fed (for the bigram embeddings)."""
        real = input_ids.ne(self.pad_id).long()
        count = torch.cumsum(real, dim=1)
        if past_real is not None:
            count = count + past_real[:, None]
        positions = count * real + self.pad_id
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        x = self.norm(x)
        if self.bigram is not None:
            x = x + self.bigram(input_ids, previous).to(x.dtype)
        return self.dropout(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention followed by its output projection (no residual, no norm)."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x: [B, T, D]; mask: bool, broadcastable to [B, heads, T, T] (True = attend)."""
        q, k, v = (split_heads(proj(x), self.num_heads) for proj in (self.query, self.key, self.value))
        p = self.dropout if self.training else 0.0
        return self.out(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)))

    def step(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Causal attention of S new tokens over the cached past ones and themselves.

        x: [B, S, D]; past: keys, values [B, heads, P, D/heads] or None. Returns the output
        [B, S, D] and the keys/values of all P + S tokens (the next step's ``past``).
        """
        q, k, v = (split_heads(proj(x), self.num_heads) for proj in (self.query, self.key, self.value))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        s, total = q.shape[2], k.shape[2]
        # New token i (absolute position total - s + i) sees every key up to its own position;
        # a single new token sees everything, so no mask at all.
        mask = None
        if s > 1:
            mask = torch.ones(s, total, dtype=torch.bool, device=x.device).tril(diagonal=total - s)
        p = self.dropout if self.training else 0.0
        out = self.out(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)))
        return out, (k, v)


class TextLayer(nn.Module):
    """One transformer layer; with ``image`` given (fused layers only), gated text-to-image attention.

    ``h = LN(self_out + alpha * cross(self_out, image) + x)``, then the FFN and its LayerNorm, which
    the official coarse model skips on its last layer in fusion mode (``output_norm=False``).
    """

    def __init__(self, cfg: TextConfig, image_dim: int | None = None) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.attention = SelfAttention(d, cfg.num_heads, cfg.dropout)
        self.t2i = TextToImageAttention(d, image_dim, cfg.num_heads) if image_dim is not None else None
        self.attention_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.intermediate = nn.Linear(d, cfg.intermediate_size)
        self.output = nn.Linear(cfg.intermediate_size, d)
        self.output_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, image: torch.Tensor | None = None, output_norm: bool = True
    ) -> torch.Tensor:
        """x: [B, T, D]; mask: bool [B, 1, 1|T, T]; image: [B, N, Ci] -> [B, T, D]."""
        attn = self.dropout(self.attention(x, mask))
        if image is not None:
            attn = attn + self.dropout(self.t2i(attn, image))
        return self._feed_forward(attn, x, output_norm)

    def step(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None,
        image_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Incremental caption-mode forward: x [B, S, D] new tokens, ``past`` the cached
        self-attention keys/values, ``image_kv`` the t2i keys/values of the image (fused layers).
        Equals :meth:`forward` with a causal mask over the whole sequence, for the new tokens.
        Returns ([B, S, D], the keys/values of all tokens so far)."""
        a, kv = self.attention.step(x, past)
        attn = self.dropout(a)
        if image_kv is not None:
            attn = attn + self.dropout(self.t2i.attend(attn, *image_kv))
        return self._feed_forward(attn, x, True), kv

    def _feed_forward(self, attn: torch.Tensor, x: torch.Tensor, output_norm: bool) -> torch.Tensor:
        h = self.attention_norm(attn + x)
        y = self.dropout(self.output(F.gelu(self.intermediate(h)))) + h
        return self.output_norm(y) if output_norm else y


class TextEncoder(nn.Module):
    """Embeddings + layers. Layers listed in ``fused_layers`` get text-to-image attention whose
    keys/values have the width given for that layer."""

    def __init__(self, cfg: TextConfig, fused_layers: dict[int, int] | None = None) -> None:
        super().__init__()
        fused_layers = fused_layers or {}
        self.cfg = cfg
        self.embeddings = TextEmbeddings(cfg)
        self.layers = nn.ModuleList(TextLayer(cfg, fused_layers.get(i)) for i in range(cfg.num_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unimodal forward (every layer with its output norm). [B, T] -> [B, T, D]."""
        mask = attention_mask.bool()[:, None, None, :]
        x = self.embeddings(input_ids)
        for layer in self.layers:
            x = layer(x, mask)
        return x

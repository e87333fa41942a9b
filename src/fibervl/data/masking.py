"""Masked language modelling inputs (BERT / RoBERTa / FIBER: 15 %, then 80/10/10)."""

from __future__ import annotations

import torch

from .tokenizer import Tokenizer

IGNORE_INDEX = -100


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    tokenizer: Tokenizer,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose ``probability`` of the real, non-special tokens; replace 80 % of them by
    ``<mask>``, 10 % by a random non-special token, keep 10 %.

    input_ids, attention_mask: [B, L] int64. Returns (masked_ids [B, L], labels [B, L]) with
    labels = the original id at chosen positions and -100 elsewhere.
    """
    special = torch.tensor(sorted(tokenizer.special_token_ids), dtype=input_ids.dtype)
    candidates = attention_mask.bool() & ~torch.isin(input_ids, special)
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & candidates
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    roll = torch.rand(input_ids.shape, generator=generator)
    to_mask = chosen & (roll < 0.8)
    to_random = chosen & (roll >= 0.8) & (roll < 0.9)
    masked = input_ids.clone()
    masked[to_mask] = tokenizer.mask_token_id
    # Random replacements come from the ordinary tokens only.
    ordinary = torch.tensor([i for i in range(tokenizer.vocab_size) if i not in tokenizer.special_token_ids],
                            dtype=input_ids.dtype)
    picks = torch.randint(len(ordinary), (int(to_random.sum()),), generator=generator)
    masked[to_random] = ordinary[picks]
    return masked, labels

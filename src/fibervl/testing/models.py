"""Model set-ups shared by tests and benchmarks."""

from __future__ import annotations

import torch
from torch import nn


def set_fusion_gates(model: nn.Module, value: float) -> nn.Module:
    """Fill every fusion gate (each parameter named ``*.alpha``) with ``value`` and return the
    model. A fresh model's gates start at ``config.fusion.alpha_init`` (0 for the official
    models), where fusion changes nothing; tests and benchmarks open them (e.g. 0.5, as after
    training) so that the cross-attention is in the outputs and the gradients."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".alpha"):
                p.fill_(value)
    return model

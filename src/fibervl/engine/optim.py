"""AdamW with config-driven parameter groups, and warmup-then-decay learning-rate schedules.

Parameter-group rule (official FIBER/METER recipe, expressed as config instead of code):

* **Learning rate.** ``lr_multipliers`` maps a *pattern* to a multiplier of ``lr``. A pattern that
  contains a glob character (``*``, ``?``, ``[``) matches a parameter whose full name matches it
  with :func:`fnmatch.fnmatchcase`; any other pattern matches a name that *contains* it as a
  substring. When several patterns match, the **longest pattern** wins, ties going to the one
  listed first. A parameter no pattern matches gets multiplier 1.0.
  Example: ``{"heads.": 5.0, "cross_modal.": 5.0, ".i2t": 5.0, ".t2i": 5.0}``.
* **Weight decay.** ``weight_decay`` applies to every parameter except: any parameter with
  ``ndim <= 1`` (biases, LayerNorm/GroupNorm weights, scalars such as temperatures and fusion
  alphas) and any parameter whose name matches one of ``no_decay`` (same substring/glob rule;
  e.g. ``"pos_embed"``, ``"relative_position_bias_table"``).
* Parameters with ``requires_grad=False`` are left out.

Groups are formed per distinct (multiplier, decay) pair and carry a readable ``name``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
from torch import nn

_GLOB_CHARS = set("*?[")


@dataclass
class OptimConfig:
    """AdamW hyper-parameters. ``lr`` is the base (backbone) learning rate."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    no_decay: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        for k, v in self.lr_multipliers.items():
            if v < 0:
                raise ValueError(f"lr_multipliers[{k!r}] must be >= 0, got {v}")


@dataclass
class ScheduleConfig:
    """Warmup then decay. ``warmup`` < 1 is a fraction of the total steps, >= 1 a step count.

    ``name``: ``linear`` (to ``end_factor * lr`` at the last step), ``cosine`` (half cosine to
    ``end_factor * lr``), ``constant`` (flat after warmup) or ``step`` (times ``gamma`` at each
    of ``milestones``, fractions of the total steps when < 1, else step counts: the GLIP / FIBER
    fine-grained ``WarmupMultiStepLR`` with ``SOLVER.STEPS (0.67, 0.89)``, ``GAMMA 0.1``).
    """

    name: Literal["linear", "cosine", "constant", "step"] = "linear"
    warmup: float = 0.1
    end_factor: float = 0.0
    milestones: tuple[float, ...] = (0.67, 0.89)
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.warmup >= 1 and self.warmup != int(self.warmup):
            raise ValueError(f"warmup >= 1 is a step count and must be whole, got {self.warmup}")
        if not 0.0 <= self.end_factor <= 1.0:
            raise ValueError(f"end_factor must be in [0, 1], got {self.end_factor}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if any(m <= 0 for m in self.milestones):
            raise ValueError(f"milestones must be > 0, got {self.milestones}")


def _matches(name: str, pattern: str) -> bool:
    if _GLOB_CHARS & set(pattern):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


def lr_multiplier_for(name: str, lr_multipliers: Mapping[str, float]) -> float:
    """Multiplier for parameter ``name``: the longest matching pattern wins, first on ties."""
    best: Optional[tuple[int, float]] = None
    for pattern, mult in lr_multipliers.items():
        if _matches(name, pattern) and (best is None or len(pattern) > best[0]):
            best = (len(pattern), float(mult))
    return 1.0 if best is None else best[1]


def uses_weight_decay(name: str, param: torch.Tensor, no_decay: Sequence[str] = ()) -> bool:
    """False for 1-D / scalar parameters and names matching a ``no_decay`` pattern."""
    if param.ndim <= 1:
        return False
    return not any(_matches(name, p) for p in no_decay)


def build_param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]], cfg: OptimConfig
) -> list[dict]:
    """Group trainable parameters by (lr multiplier, decay). Each group has keys
    ``params``, ``lr``, ``weight_decay``, ``lr_mult``, ``name`` and ``param_names``."""
    groups: dict[tuple[float, bool], dict] = {}
    seen: set[int] = set()
    for name, p in named_params:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))  # tied weights: optimise once
        mult = lr_multiplier_for(name, cfg.lr_multipliers)
        decay = uses_weight_decay(name, p, cfg.no_decay)
        key = (mult, decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "param_names": [],
                "lr": cfg.lr * mult,
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "lr_mult": mult,
                "name": f"lr_x{mult:g}_{'decay' if decay else 'no_decay'}",
            }
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    if not groups:
        raise ValueError("no trainable parameters (every parameter has requires_grad=False)")
    return list(groups.values())


def build_optimizer(named_params: Iterable[tuple[str, nn.Parameter]], cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over :func:`build_param_groups`. ``param_names`` are kept in the groups for logging."""
    groups = build_param_groups(named_params, cfg)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def warmup_steps_for(cfg: ScheduleConfig, total_steps: int) -> int:
    if cfg.warmup < 1:
        return int(round(cfg.warmup * total_steps))
    return int(cfg.warmup)


def lr_factor(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """Multiplier of each group's initial lr after ``step`` optimizer steps (0-based).

    Warmup: ``(step + 1) / warmup`` for ``step < warmup`` so the first update is not lr=0.
    Decay: from 1 at the end of warmup to ``end_factor`` at ``step == total_steps``.
    """
    warm = warmup_steps_for(cfg, total_steps)
    if step < warm:
        return (step + 1) / warm
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "step":
        passed = sum(step >= (m * total_steps if m < 1 else m) for m in cfg.milestones)
        return cfg.gamma ** passed
    span = max(1, total_steps - warm)
    progress = min(1.0, (step - warm) / span)
    if cfg.name == "linear":
        shape = 1.0 - progress
    elif cfg.name == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:  # pragma: no cover - guarded by ScheduleConfig's Literal
        raise ValueError(f"unknown schedule {cfg.name!r}")
    return cfg.end_factor + (1.0 - cfg.end_factor) * shape


class _Factor:
    """Picklable-free lr lambda (LambdaLR stores callable objects' __dict__: primitives only)."""

    def __init__(self, total_steps: int, cfg: ScheduleConfig):
        self.total_steps = int(total_steps)
        self.name = cfg.name
        self.warmup = float(cfg.warmup)
        self.end_factor = float(cfg.end_factor)
        self.milestones = [float(m) for m in cfg.milestones]
        self.gamma = float(cfg.gamma)

    def __call__(self, step: int) -> float:
        cfg = ScheduleConfig(name=self.name, warmup=self.warmup, end_factor=self.end_factor,  # type: ignore[arg-type]
                             milestones=tuple(self.milestones), gamma=self.gamma)
        return lr_factor(step, self.total_steps, cfg)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LambdaLR applying :func:`lr_factor` to every group's initial lr."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _Factor(total_steps, cfg))

"""AdamW with config-driven parameter groups, and warmup-then-decay learning-rate schedules.

Parameter-group rule (official FIBER/METER recipe, expressed as config instead of code):

* **Learning rate.** ``lr_multipliers`` maps a *parameter group* of the model to a multiplier of
  ``lr``: ``{"heads": 5.0, "fusion": 5.0, "gates": 20.0}``. The model names its groups itself
  (``model.parameter_groups()``: group name -> the modules and parameters in it; the trainer
  passes them here), so a config never spells out parameter names. Groups may nest (FIBER's
  ``gates`` lie inside ``fusion``): a parameter in several named groups takes the multiplier of
  the **smallest** of them (fewest parameters), ties going to the one listed first. A key that
  is not one of the model's groups is an error listing them.
* **Name patterns** (for models without groups, or a one-off override): a key containing ``.``
  or a glob character (``*``, ``?``, ``[``) is a pattern over parameter names. A glob matches a
  name that matches it whole (:func:`fnmatch.fnmatchcase`); any other pattern a name that
  *contains* it. When several patterns match, the **longest** wins, ties going to the one listed
  first; a matching pattern overrides the groups. A parameter nothing matches gets 1.0.
* **Weight decay.** ``weight_decay`` applies to every parameter except: any parameter with
  ``ndim <= 1`` (biases, LayerNorm/GroupNorm weights, scalars such as temperatures and fusion
  alphas) and any parameter whose name matches one of ``no_decay`` (same substring/glob rule;
  e.g. ``"pos_embed"``, ``"relative_position_bias_table"``).
* Parameters with ``requires_grad=False`` are left out.

Optimizer groups are formed per distinct (multiplier, decay) pair, in the order the parameters
first reach them, and carry a readable ``name``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import torch
from torch import nn

from ..errors import ConfigError

_GLOB_CHARS = set("*?[")

# What a model's ``parameter_groups()`` returns: group name -> the modules and parameters in it.
ParameterGroups = Mapping[str, Sequence[Union[nn.Module, nn.Parameter]]]


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


def is_name_pattern(key: str) -> bool:
    """Whether an ``lr_multipliers`` key is a parameter-name pattern (it holds ``.`` or a glob
    character) rather than the name of a parameter group."""
    return "." in key or bool(_GLOB_CHARS & set(key))


def _pattern_multiplier(name: str, patterns: Mapping[str, float]) -> Optional[float]:
    best: Optional[tuple[int, float]] = None
    for pattern, mult in patterns.items():
        if _matches(name, pattern) and (best is None or len(pattern) > best[0]):
            best = (len(pattern), float(mult))
    return None if best is None else best[1]


def lr_multiplier_for(name: str, lr_multipliers: Mapping[str, float]) -> float:
    """Multiplier for parameter ``name`` under name patterns: the longest matching pattern wins,
    first on ties; 1.0 if none matches."""
    mult = _pattern_multiplier(name, lr_multipliers)
    return 1.0 if mult is None else mult


def _group_params(items: Sequence[Union[nn.Module, nn.Parameter]]) -> set[int]:
    """The ids of the parameters of a group's modules and parameters."""
    ids: set[int] = set()
    for item in items:
        ids.update(id(p) for p in ([item] if isinstance(item, nn.Parameter) else item.parameters()))
    return ids


def multiplier_rule(lr_multipliers: Mapping[str, float],
                    model_groups: Optional[ParameterGroups] = None) -> Callable[[str, nn.Parameter], float]:
    """``(name, parameter) -> lr multiplier`` for ``lr_multipliers`` (see the module docstring):
    a matching name pattern, else the smallest named group holding the parameter, else 1.0.
    Raises :class:`~fibervl.errors.ConfigError` (a ``ValueError``) for a key that is neither a
    group of ``model_groups`` nor a pattern."""
    groups = dict(model_groups or {})
    patterns = {k: float(v) for k, v in lr_multipliers.items() if k not in groups and is_name_pattern(k)}
    unknown = [k for k in lr_multipliers if k not in groups and k not in patterns]
    if unknown:
        have = (f"its groups are: {', '.join(groups)}" if groups
                else "it names no parameter groups (no parameter_groups() method)")
        what = "is not a parameter group" if len(unknown) == 1 else "are not parameter groups"
        raise ConfigError(f"optim.lr_multipliers: {', '.join(map(repr, unknown))} {what} of the model; {have}. "
                          "A parameter-name pattern holds a '.' or a glob character (e.g. 'heads.').")
    # smallest group first (a nested group overrides the one around it); stable sort: ties keep
    # the order in which lr_multipliers lists them
    named = sorted(((_group_params(groups[k]), float(v)) for k, v in lr_multipliers.items() if k in groups),
                   key=lambda member_mult: len(member_mult[0]))

    def rule(name: str, param: nn.Parameter) -> float:
        mult = _pattern_multiplier(name, patterns)
        if mult is not None:
            return mult
        return next((m for members, m in named if id(param) in members), 1.0)

    return rule


def uses_weight_decay(name: str, param: torch.Tensor, no_decay: Sequence[str] = ()) -> bool:
    """False for 1-D / scalar parameters and names matching a ``no_decay`` pattern."""
    if param.ndim <= 1:
        return False
    return not any(_matches(name, p) for p in no_decay)


def build_param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]], cfg: OptimConfig,
    model_groups: Optional[ParameterGroups] = None,
) -> list[dict]:
    """Group trainable parameters by (lr multiplier, decay). Each group has keys
    ``params``, ``lr``, ``weight_decay``, ``lr_mult``, ``name`` and ``param_names``.
    ``model_groups``: the model's named parameter groups, which ``cfg.lr_multipliers`` may name."""
    multiplier = multiplier_rule(cfg.lr_multipliers, model_groups)
    groups: dict[tuple[float, bool], dict] = {}
    seen: set[int] = set()
    for name, p in named_params:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))  # tied weights: optimise once
        mult = multiplier(name, p)
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


def build_optimizer(named_params: Iterable[tuple[str, nn.Parameter]], cfg: OptimConfig,
                    model_groups: Optional[ParameterGroups] = None) -> torch.optim.AdamW:
    """AdamW over :func:`build_param_groups`. ``param_names`` are kept in the groups for logging.

    The fused kernel updates every tensor of a group in one call: a small model has hundreds of
    small tensors, and the per-tensor loop cost fiber-tiny 14.7 ms a step against 4.3 ms
    (BENCHMARKS.md); its result equals the loop's to float rounding."""
    groups = build_param_groups(named_params, cfg, model_groups)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                             fused=True)


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

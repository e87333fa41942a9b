"""Training engine: one trainer for every stage and task (see docs/engine.md).

Modules: :mod:`.config` (typed YAML configs), :mod:`.distributed` (process group, gathers),
:mod:`.optim` (parameter groups, AdamW, schedules), :mod:`.checkpoint` (atomic checkpoints),
:mod:`.ema`, :mod:`.sampler`, :mod:`.rng`, :mod:`.logger`, :mod:`.task` (the task contract) and
:mod:`.trainer`.
"""

from ..errors import CheckpointError, ConfigError
from .checkpoint import find_latest_checkpoint, verify_checkpoint
from .config import load_config, parse_cli, save_config
from .optim import OptimConfig, ScheduleConfig, build_optimizer, build_param_groups, build_scheduler
from .trainer import Trainer, TrainConfig

__all__ = [
    "CheckpointError", "ConfigError", "OptimConfig", "ScheduleConfig", "TrainConfig", "Trainer",
    "build_optimizer", "build_param_groups", "build_scheduler", "find_latest_checkpoint", "load_config",
    "parse_cli", "save_config", "verify_checkpoint",
]

"""The training loop shared by every stage and task.

Usage (single process, or under ``torchrun`` unchanged)::

    cfg = load_config(TrainConfig, "train.yaml", sys.argv[1:])
    trainer = Trainer(cfg, model, task, train_dataset, collate_fn=collate, evaluate=eval_fn)
    summary = trainer.fit()

The task contract is in :mod:`fibervl.engine.task`. Units: ``step`` is one optimizer step (one
accumulation window of ``grad_accum_steps`` micro-batches of ``batch_size`` samples per rank);
``max_steps``, ``log_every``, ``ckpt_every``, ``eval_every`` and the schedule count those.

Exact resume: the data order depends only on ``(seed, epoch)``; a checkpoint after step ``k``
records epoch and micro-batches consumed in that epoch, every rank's python/numpy/torch random
state, optimizer, scheduler, grad scaler, EMA and task state. Resuming skips exactly the consumed
batches (without loading them, for map-style datasets) and, in a single process on CPU with the
same settings, ends bit-identical to an uninterrupted run. With ``num_workers > 0`` a dataset that
draws augmentation randomness from its worker's global RNG is not reproduced exactly; seed such
randomness from the sample index and epoch instead.

Non-finite steps: a step whose loss (on any rank, any micro-batch) or gradient norm is NaN or
infinite applies no update; it is logged with its loss terms and sample ids and counted, and
``max_nonfinite_steps`` such steps in a row stop training with :class:`NonFiniteError`. With fp16
the GradScaler keeps its own handling of inf/NaN gradients (skip and lower the scale).
"""

from __future__ import annotations

import math
import signal
import threading
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Literal, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from . import checkpoint as ckpt
from . import distributed as D
from .config import save_config, to_dict
from .ema import ModelEMA
from .logger import RunLogger
from .optim import OptimConfig, ScheduleConfig, build_optimizer, build_scheduler
from .precision import auto_reason, resolve_precision, training_forward
from .rng import get_rng_state, preserved_rng, seed_everything, set_rng_state
from .sampler import ResumableDistributedSampler
from .task import batch_sample_ids, default_batch_size, move_to_device


class NonFiniteError(FloatingPointError, RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient.

    A RuntimeError too, so that command-line front ends print it as an error message."""


@dataclass
class TrainConfig:
    """Trainer settings. See docs/engine.md for the meaning of every key."""

    # One length: a config that gives one of these replaces a recipe default's other
    # (engine/config.py); given both, max_steps wins.
    ALTERNATIVE_KEYS: ClassVar[tuple[tuple[str, ...], ...]] = (("max_steps", "epochs"),)

    run_dir: str = "runs/default"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_steps: Optional[int] = None
    epochs: Optional[int] = None
    batch_size: int = 32
    grad_accum_steps: int = 1
    num_workers: int = 0
    shuffle: bool = True
    drop_last: bool = True
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    clip_grad_norm: Optional[float] = None
    ema_decay: Optional[float] = None
    ema_warmup: bool = False
    eval_with_ema: bool = False
    log_every: int = 10
    ckpt_every: Optional[int] = 1000
    keep_last: int = 3
    eval_every: Optional[int] = None
    tensorboard: bool = False
    progress_bar: bool = True
    resume: str = ""
    verify_checkpoint_hash: bool = True
    find_unused_parameters: bool = False
    ddp_broadcast_buffers: bool = False
    stop_on_signal: bool = True
    max_nonfinite_steps: int = 5
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def __post_init__(self) -> None:
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set max_steps or epochs")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"max_steps must be > 0, got {self.max_steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        for name in ("batch_size", "grad_accum_steps", "log_every", "max_nonfinite_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("ckpt_every", "eval_every"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be > 0 or null, got {v}")
        if self.num_workers < 0 or self.keep_last < 0:
            raise ValueError("num_workers and keep_last must be >= 0")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ValueError(f"clip_grad_norm must be > 0 or null, got {self.clip_grad_norm}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or null, got {self.ema_decay}")
        if self.eval_with_ema and self.ema_decay is None:
            raise ValueError("eval_with_ema needs ema_decay")


class _StepModule(nn.Module):
    """Wraps model + task so that one DDP forward runs the task's whole training step."""

    def __init__(self, model: nn.Module, task: Any):
        super().__init__()
        self.model = model
        # register the task as a submodule only if it is one (its parameters then train and sync)
        if isinstance(task, nn.Module):
            self.task = task
        else:
            self._task = task

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        task = self.task if hasattr(self, "task") else self._task
        return task.training_step(self.model, batch)


class _StopFlag:
    def __init__(self) -> None:
        self.requested = False
        self.signum: Optional[int] = None


class Trainer:
    """Trains ``model`` with ``task`` on ``train_data``.

    Args:
        cfg: :class:`TrainConfig`.
        model: any ``nn.Module`` (not yet on the device; the trainer moves it).
        task: object following :mod:`fibervl.engine.task`.
        train_data: a map-style ``Dataset`` (sampled by :class:`ResumableDistributedSampler`) or an
            ``IterableDataset`` that shards itself per rank. An iterable dataset may define
            ``set_epoch(epoch)`` and ``set_start(n_samples)`` (skip the first samples of this
            rank's epoch stream); without ``set_start`` resume skips batches by reading them.
            Every rank must see the same number of batches per epoch.
        collate_fn: passed to the DataLoader.
        evaluate: optional ``evaluate(model) -> dict[str, float]`` run on every rank (model in
            eval mode, under ``torch.no_grad``, random streams preserved) every ``eval_every``
            steps and at the end.
        config_snapshot: what to write to ``<run_dir>/config.yaml`` (a dataclass or dict;
            default ``cfg``), e.g. the whole experiment config.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        task: Any,
        train_data: Dataset,
        *,
        collate_fn: Optional[Callable] = None,
        evaluate: Optional[Callable[[nn.Module], dict[str, float]]] = None,
        config_snapshot: Any = None,
    ):
        if not callable(getattr(task, "training_step", None)):
            raise TypeError("task must define training_step(model, batch) -> dict with 'loss'")
        self.cfg = cfg
        self.model = model
        self.task = task
        self.train_data = train_data
        self.collate_fn = collate_fn
        self.evaluate_fn = evaluate
        self.config_snapshot = config_snapshot if config_snapshot is not None else cfg
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        # progress counters (the data position is (epoch, batches_in_epoch))
        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.samples_seen = 0
        # skipped (non-finite) steps: in a row now, and over the whole run
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self._last_ckpt_step: Optional[int] = None
        self._bad_grad_norm = float("nan")
        self._stop = _StopFlag()

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.cfg
        self.device = D.init_distributed(cfg.device)
        self.rank, self.world = D.get_rank(), D.get_world_size()
        self.is_main = self.rank == 0
        seed_everything(cfg.seed + self.rank)  # different dropout per rank, reproducible
        self.model.to(self.device)
        if isinstance(self.task, nn.Module):
            self.task.to(self.device)
        named = list(self.model.named_parameters())
        if isinstance(self.task, nn.Module):
            named += [(f"task.{n}", p) for n, p in self.task.named_parameters()]
        # the model may name its parameter groups, which optim.lr_multipliers then refers to
        groups = self.model.parameter_groups() if hasattr(self.model, "parameter_groups") else None
        self.optimizer = build_optimizer(named, cfg.optim, groups)
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.loader_len = self._epoch_len()
        self.total_steps = self._total_steps()
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, self.total_steps)
        self.precision = resolve_precision(cfg.precision, self.device)
        if self.precision == "fp16":
            self.scaler: Optional[torch.amp.GradScaler] = torch.amp.GradScaler(self.device.type)
        else:
            self.scaler = None
        self.ema = ModelEMA(self.model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay is not None else None
        self.step_module = _StepModule(self.model, self.task)
        if D.is_distributed():
            from torch.nn.parallel import DistributedDataParallel as DDP

            import inspect

            # buffers are synced from rank 0 at construction either way; per forward only if asked
            # (torch >= 2.12 renamed broadcast_buffers to forward_sync_buffers)
            sync_kw = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
                       else "broadcast_buffers")
            self.ddp: Optional[nn.Module] = DDP(
                self.step_module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters,
                **{sync_kw: cfg.ddp_broadcast_buffers},
            )
        else:
            self.ddp = None
        self.logger = RunLogger(self.run_dir, enabled=self.is_main, tensorboard=cfg.tensorboard,
                                progress_bar=cfg.progress_bar, total_steps=self.total_steps)

    def _epoch_len(self) -> Optional[int]:
        """Micro-batches per epoch per rank, or None for an iterable dataset without length."""
        if isinstance(self.train_data, IterableDataset):
            try:
                n = len(self.train_data)  # type: ignore[arg-type]
            except TypeError:
                return None
            return n // self.cfg.batch_size if self.cfg.drop_last else math.ceil(n / self.cfg.batch_size)
        sampler = self._make_sampler()
        n = len(sampler)
        n_batches = n // self.cfg.batch_size if self.cfg.drop_last else math.ceil(n / self.cfg.batch_size)
        if n_batches == 0:
            raise ValueError(
                f"dataset of {len(self.train_data)} samples gives no batch of {self.cfg.batch_size} "  # type: ignore[arg-type]
                f"per rank over {self.world} rank(s) (drop_last={self.cfg.drop_last}): "
                f"lower train.batch_size or set train.drop_last=false"
            )
        return n_batches

    def _total_steps(self) -> int:
        if self.cfg.max_steps is not None:
            return self.cfg.max_steps
        if self.loader_len is None:
            raise ValueError("epochs needs a dataset with a length; use max_steps for this dataset")
        per_epoch = math.ceil(self.loader_len / self.cfg.grad_accum_steps)
        return per_epoch * int(self.cfg.epochs)  # type: ignore[arg-type]

    def _make_sampler(self) -> ResumableDistributedSampler:
        return ResumableDistributedSampler(
            self.train_data, num_replicas=self.world, rank=self.rank, shuffle=self.cfg.shuffle,
            seed=self.cfg.seed, drop_last=self.cfg.drop_last,
        )

    def _loader_generator(self, epoch: int) -> torch.Generator:
        # Worker base seeds come from this generator, never from the global stream (which
        # carries dropout and must not be consumed by creating an iterator).
        return torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + epoch * 7919 + self.rank) % (2**63))

    def _epoch_iterator(self) -> Iterator[Any]:
        """Iterator over this rank's micro-batches from the current data position."""
        cfg = self.cfg
        start_samples = self.batches_in_epoch * cfg.batch_size
        common = dict(batch_size=cfg.batch_size, num_workers=cfg.num_workers, collate_fn=self.collate_fn,
                      drop_last=cfg.drop_last, pin_memory=self.device.type == "cuda",
                      generator=self._loader_generator(self.epoch))
        if isinstance(self.train_data, IterableDataset):
            if hasattr(self.train_data, "set_epoch"):
                self.train_data.set_epoch(self.epoch)
            skip = 0
            if hasattr(self.train_data, "set_start"):
                self.train_data.set_start(start_samples)
            else:
                skip = self.batches_in_epoch
            it = iter(DataLoader(self.train_data, **common))
            for _ in range(skip):
                next(it, None)
            return it
        sampler = self._make_sampler()
        sampler.set_epoch(self.epoch, start=start_samples)
        return iter(DataLoader(self.train_data, sampler=sampler, **common))

    # ------------------------------------------------------------------ checkpointing
    def _state(self) -> dict[str, Any]:
        rng_all = D.all_gather_object(get_rng_state())
        task_state = None
        if hasattr(self.task, "state_dict"):
            task_state = self.task.state_dict()
        return {
            "format": 1,
            "step": self.step,
            "epoch": self.epoch,
            "batches_in_epoch": self.batches_in_epoch,
            "samples_seen": self.samples_seen,
            "nonfinite": {"in_a_row": self.nonfinite_in_a_row, "total": self.nonfinite_total},
            "seed": self.cfg.seed,
            "world_size": self.world,
            "batch_size": self.cfg.batch_size,
            "grad_accum_steps": self.cfg.grad_accum_steps,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.meta() if self.ema is not None else None,
            "task": task_state,
            "rng": rng_all,
        }

    def save_checkpoint(self) -> Optional[Path]:
        """Write a checkpoint of the current step (collective: call on every rank).

        A failed write (disk full) raises :class:`CheckpointError` on every rank, so that no rank
        waits for the others forever; the earlier checkpoints stay intact."""
        state = self._state()
        path = None
        error: Optional[ckpt.CheckpointError] = None
        if self.is_main:
            extra = {"ema": self.ema.state_dict()} if self.ema is not None else None
            try:
                path = ckpt.save_checkpoint(self.ckpt_root, self.step, self.model, state, extra, self.cfg.keep_last)
            except ckpt.CheckpointError as e:
                error = e
            else:
                self.logger.info("saved checkpoint %s", path)
        if self._any_rank(error is not None):  # also the barrier after the write
            if error is not None:
                self.logger.warning("%s", error)  # the run directory tells what stopped the run
                raise error
            raise ckpt.CheckpointError(f"rank 0 could not write the checkpoint of step {self.step} (see its error)")
        self._last_ckpt_step = self.step
        return path

    def _last_checkpoint(self) -> str:
        if self._last_ckpt_step is None:
            return f"none yet in {self.ckpt_root}"
        return str(self.ckpt_root / ckpt.step_dir_name(self._last_ckpt_step))

    def _resolve_resume(self) -> Optional[Path]:
        r = self.cfg.resume
        existing = ckpt.list_checkpoints(self.ckpt_root)
        if not r:
            if existing:
                # never overwrite (and let keep_last delete) another run's checkpoints
                raise ckpt.CheckpointError(
                    f"{self.ckpt_root} already holds checkpoints (newest {existing[-1][1].name}); "
                    "resume with resume=auto / --resume, or choose a new run_dir"
                )
            return None
        if r == "auto":
            found = ckpt.find_latest_checkpoint(self.ckpt_root, check_hash=self.cfg.verify_checkpoint_hash,
                                                warn=lambda msg: self.logger.warning("%s", msg))
            if found is None and existing:
                raise ckpt.CheckpointError(
                    f"no usable checkpoint in {self.ckpt_root}: every one of {[p.name for _, p in existing]} "
                    "is incomplete or corrupt (see the warnings above)"
                )
            return found
        path = Path(r)
        if path.name == "latest" or (path.is_dir() and (path / "latest").is_file()):
            pointer = path if path.name == "latest" else path / "latest"
            if not pointer.is_file():
                raise ckpt.CheckpointError(f"checkpoint pointer file missing: {pointer}")
            path = pointer.parent / pointer.read_text(encoding="utf-8").strip()
        ckpt.verify_checkpoint(path, check_hash=self.cfg.verify_checkpoint_hash)
        return path

    def _restore(self, path: Path) -> None:
        cfg = self.cfg
        ckpt.load_model_weights(path, self.model)
        state = ckpt.load_state(path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # load_state_dict also restored the schedule's parameters; the current config wins
        # (e.g. max_steps raised to extend a run), with a warning when they differ
        fresh = build_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), cfg.schedule, self.total_steps)
        want = vars(fresh.lr_lambdas[0])
        if any(vars(f) != want for f in self.scheduler.lr_lambdas):
            self.logger.warning("schedule differs from the checkpoint's (%s): continuing with %s",
                                vars(self.scheduler.lr_lambdas[0]), want)
            for f in self.scheduler.lr_lambdas:
                f.__dict__.update(want)
            last = self.scheduler.last_epoch  # = optimizer steps taken: set the next step's lr now
            for g, base, f in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
                g["lr"] = base * f(last)
            self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("ema") is None:
                self.logger.warning("checkpoint %s has no EMA weights: EMA restarts from the current weights", path)
                self.ema = ModelEMA(self.model, cfg.ema_decay, cfg.ema_warmup)  # type: ignore[arg-type]
            else:
                self.ema.load_state_dict(ckpt.load_weights_file(path, "ema"), state["ema"])
        if state.get("task") is not None:
            if not hasattr(self.task, "load_state_dict"):
                raise ckpt.CheckpointError(f"checkpoint {path} holds task state but the task cannot load it")
            self.task.load_state_dict(state["task"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.samples_seen = int(state["samples_seen"])
        nonfinite = state.get("nonfinite") or {}  # absent in checkpoints written before the counters
        self.nonfinite_in_a_row = int(nonfinite.get("in_a_row", 0))
        self.nonfinite_total = int(nonfinite.get("total", 0))
        self._last_ckpt_step = self.step
        same_layout = (state["world_size"] == self.world and state["batch_size"] == cfg.batch_size
                       and state["grad_accum_steps"] == cfg.grad_accum_steps and state["seed"] == cfg.seed)
        if same_layout:
            self.batches_in_epoch = int(state["batches_in_epoch"])
            set_rng_state(state["rng"][self.rank])
        else:
            # Approximate: keep the global sample position within the epoch, fresh random streams.
            global_done = int(state["batches_in_epoch"]) * state["batch_size"] * state["world_size"]
            self.batches_in_epoch = global_done // (cfg.batch_size * self.world)
            self.batches_in_epoch -= self.batches_in_epoch % cfg.grad_accum_steps
            seed_everything(cfg.seed + self.rank + 7919 * self.step)
            self.logger.warning(
                "resuming with a different world size / batch size / accumulation / seed than the "
                "checkpoint: the data position is approximated and the run will not match exactly"
            )
        # Move optimizer state onto the device of the parameters (loaded on CPU).
        for st in self.optimizer.state.values():
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and k != "step":
                    st[k] = v.to(self.device)
        self.logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.batches_in_epoch)

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> list[tuple[int, Any]]:
        if not self.cfg.stop_on_signal or threading.current_thread() is not threading.main_thread():
            return []
        old = []

        def handler(signum: int, frame: Any) -> None:
            self._stop.requested = True
            self._stop.signum = signum

        for s in (signal.SIGTERM, signal.SIGINT):
            old.append((s, signal.signal(s, handler)))
        return old

    def _stop_requested(self) -> bool:
        return self._any_rank(self._stop.requested)

    def _any_rank(self, flag: bool | torch.Tensor) -> bool:
        """True if ``flag`` holds on any rank (collective: every rank gets the same answer)."""
        t = (flag.detach().float().reshape(1).to(self.device) if isinstance(flag, torch.Tensor)
             else torch.tensor([1.0 if flag else 0.0], device=self.device))
        if D.is_distributed():
            t = t.clone()
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    # ------------------------------------------------------------------ evaluation
    def run_evaluation(self) -> dict[str, float]:
        if self.evaluate_fn is None:
            return {}
        was_training = self.model.training
        self.model.eval()
        ctx = self.ema.swapped_in(self.model) if (self.ema is not None and self.cfg.eval_with_ema) else nullcontext()
        try:
            with preserved_rng(), torch.no_grad(), ctx:
                results = self.evaluate_fn(self.model) or {}
        finally:
            self.model.train(was_training)
        results = {f"eval/{k}": float(v) for k, v in results.items()}
        if results:
            self.logger.metrics(self.step, results)
            self.logger.info("step %d eval: %s", self.step, ", ".join(f"{k}={v:.5g}" for k, v in results.items()))
        return results

    # ------------------------------------------------------------------ the loop
    def _forward_context(self):
        return training_forward(self.precision, self.device)

    def _micro_step(self, batch: Any, scale: float, sync: bool) -> tuple[dict[str, float], bool, bool]:
        """Forward and backward of one micro-batch.

        Returns the logged scalars, whether this rank's loss is non-finite, and whether any
        rank's is. Then no rank runs the backward: the step is dropped anyway, and a backward on
        some ranks only would leave the others waiting in DDP's gradient all-reduce."""
        batch = move_to_device(batch, self.device)
        runner = self.ddp if self.ddp is not None else self.step_module
        no_sync = self.ddp.no_sync() if (self.ddp is not None and not sync) else nullcontext()  # type: ignore[union-attr]
        with no_sync:
            with self._forward_context():
                out = runner(batch)
            if not isinstance(out, dict) or "loss" not in out:
                raise TypeError("training_step must return a dict with a 'loss' entry")
            loss = out["loss"]
            if loss.ndim != 0:
                raise ValueError(f"training_step 'loss' must be a scalar, got shape {tuple(loss.shape)}")
            bad = ~torch.isfinite(loss.detach())
            any_bad = self._any_rank(bad)
            local_bad = any_bad and bool(bad.item())  # a second sync only on a bad step
            if not any_bad:
                scaled = loss.float() * scale
                if self.scaler is not None:
                    self.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
        logged = {}
        for k, v in out.items():
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                logged[k] = float(v.detach().float().item())
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                logged[k] = float(v)
        return logged, local_bad, any_bad

    def _sync_grads_manually(self) -> None:
        """All-reduce-average gradients accumulated under ``no_sync`` (short final window)."""
        for p in self._params:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(self.world)

    def fit(self) -> dict[str, Any]:
        """Train to ``max_steps`` / ``epochs``; return a summary (final step, last metrics)."""
        self._setup()
        cfg = self.cfg
        try:
            resume_path = self._resolve_resume()
            if resume_path is None and cfg.resume and cfg.resume != "auto":
                raise ckpt.CheckpointError(f"checkpoint not found: {cfg.resume}")
            if self.is_main:
                if resume_path is None or not (self.run_dir / "config.yaml").exists():
                    self._write_snapshot(self.run_dir / "config.yaml")
                else:
                    self._write_snapshot(self.run_dir / f"config.resumed_step_{self._peek_step(resume_path)}.yaml")
            if resume_path is not None:
                self._restore(resume_path)
            else:
                self.logger.info("starting a new run in %s (%d steps, world size %d, device %s, precision %s%s)",
                                 self.run_dir, self.total_steps, self.world, self.device, self.precision,
                                 f" ({auto_reason(self.device)})" if self.cfg.precision == "auto" else "")
            self.logger.set_step(self.step)
            old_handlers = self._install_signal_handlers()
            try:
                return self._loop()
            except Exception as e:
                if self.world > 1:  # each rank says why it stopped and how to resume
                    latest = ckpt.find_latest_checkpoint(self.ckpt_root, check_hash=False)
                    self.logger.log.error("%s", D.stopped_worker_message(e, self.step, latest, self.ckpt_root))
                raise
            finally:
                for s, h in old_handlers:
                    signal.signal(s, h)
        finally:
            self.logger.close()

    def _peek_step(self, path: Path) -> int:
        return int(ckpt.verify_checkpoint(path, check_hash=False)["step"])

    def _write_snapshot(self, path: Path) -> None:
        snap = self.config_snapshot
        if isinstance(snap, dict):
            import yaml

            ckpt.write_text_atomic(path, yaml.safe_dump(to_dict(snap), sort_keys=False))
        else:
            save_config(snap, path)

    def _loop(self) -> dict[str, Any]:
        cfg = self.cfg
        self.step_module.train()
        data_iter: Optional[Iterator[Any]] = None
        accum = cfg.grad_accum_steps
        window_logs: list[dict[str, float]] = []
        t_last_log = time.perf_counter()
        samples_since_log = 0
        data_time = compute_time = 0.0
        last_metrics: dict[str, Any] = {}
        eval_results: dict[str, float] = {}
        steps_since_log = 0
        stopped_by_signal = False
        while self.step < self.total_steps:
            if data_iter is None:
                if cfg.epochs is not None and cfg.max_steps is None and self.epoch >= cfg.epochs:
                    break
                data_iter = self._epoch_iterator()
            # micro-batches in this window: a short final window at the end of an epoch
            expected = accum if self.loader_len is None else min(accum, self.loader_len - self.batches_in_epoch)
            if expected <= 0:  # epoch already complete (resumed at its very end)
                self.epoch += 1
                self.batches_in_epoch = 0
                data_iter = None
                continue
            done = 0
            epoch_ended = False
            step_logs: dict[str, float] = {}
            micro: list[_MicroRecord] = []  # this window's micro-batches, for a skipped step's warning
            loss_bad = False
            while done < expected:
                t0 = time.perf_counter()
                batch = next(data_iter, None)
                t1 = time.perf_counter()
                data_time += t1 - t0
                if batch is None:
                    epoch_ended = True
                    break
                sync = done == expected - 1
                ids = batch_sample_ids(self.task, batch)
                logs, local_bad, any_bad = self._micro_step(batch, 1.0 / expected, sync)
                micro.append(_MicroRecord(logs, ids, local_bad))
                loss_bad = loss_bad or any_bad
                compute_time += time.perf_counter() - t1
                for k, v in logs.items():
                    step_logs[k] = step_logs.get(k, 0.0) + v
                done += 1
                self.batches_in_epoch += 1
                n = self.task.batch_size(batch) if hasattr(self.task, "batch_size") else default_batch_size(batch)
                samples_since_log += n * self.world
                self.samples_seen += n * self.world
            if done == 0:  # iterable dataset exhausted at a window boundary
                self.epoch += 1
                self.batches_in_epoch = 0
                data_iter = None
                if self.loader_len is None and self.samples_seen == 0:
                    raise ValueError("the training dataset yielded no batch")
                continue
            t2 = time.perf_counter()
            if done < expected and not loss_bad:  # short window of an iterable dataset: fix scale, sync by hand
                if D.is_distributed():
                    self._sync_grads_manually()
                for p in self._params:
                    if p.grad is not None:
                        p.grad.mul_(expected / done)
            step_lr = self.optimizer.param_groups[0]["lr"] / max(self.optimizer.param_groups[0].get("lr_mult", 1.0), 1e-12)
            if loss_bad:
                applied, grad_norm = False, None
            else:
                applied, grad_norm = self._optimizer_step()
            compute_time += time.perf_counter() - t2
            self.step += 1
            steps_since_log += 1
            if applied:
                self.nonfinite_in_a_row = 0
                window_logs.append({k: v / done for k, v in step_logs.items()})
                window_logs[-1]["lr"] = step_lr
                if grad_norm is not None:
                    window_logs[-1]["grad_norm"] = grad_norm
            else:
                self._skip_step("loss" if loss_bad else "gradient", micro)  # raises after too many in a row
                window_logs.append({"lr": step_lr})
            if epoch_ended or (self.loader_len is not None and self.batches_in_epoch >= self.loader_len):
                self.epoch += 1
                self.batches_in_epoch = 0
                data_iter = None
            if applied and hasattr(self.task, "on_step_end"):
                self.task.on_step_end(self.model, self.step)
            self.logger.progress(1, {"loss": f"{window_logs[-1].get('loss', float('nan')):.4f}"})
            final = self.step >= self.total_steps
            if self.step % cfg.log_every == 0 or final:
                elapsed = time.perf_counter() - t_last_log
                last_metrics = self._log_metrics(window_logs, samples_since_log, elapsed, data_time, compute_time, steps_since_log)
                self.logger.progress(0, {"samples/s": f"{last_metrics['samples_per_s']:.1f}"})
                window_logs, samples_since_log, data_time, compute_time, steps_since_log = [], 0, 0.0, 0.0, 0
                t_last_log = time.perf_counter()
            if cfg.eval_every is not None and self.step % cfg.eval_every == 0 and not final:
                eval_results = self.run_evaluation()
            if self._stop_requested():
                self.logger.warning("stop requested (signal %s): saving a checkpoint at step %d", self._stop.signum, self.step)
                self.save_checkpoint()
                stopped_by_signal = True
                break
            if cfg.ckpt_every is not None and self.step % cfg.ckpt_every == 0 and not final:
                self.save_checkpoint()
        if not stopped_by_signal:
            eval_results = self.run_evaluation() or eval_results
            self.save_checkpoint()
            self.logger.info("training finished at step %d", self.step)
        return {"step": self.step, "epoch": self.epoch, "metrics": last_metrics, "eval": eval_results,
                "stopped_by_signal": stopped_by_signal, "skipped_steps": self.nonfinite_total}

    def _optimizer_step(self) -> tuple[bool, Optional[float]]:
        """Apply the accumulated gradients; return (applied, the clipped-from grad norm or None).

        Without a grad scaler a non-finite gradient norm (on any rank) applies nothing and
        returns ``applied=False``; with one, the scaler's own check skips such a step and lowers
        the scale (the usual fp16 overflow, not counted as a non-finite step)."""
        grad_norm = None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = None
        if self.cfg.clip_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self._params, self.cfg.clip_grad_norm)
        elif self.scaler is None:
            norm = _total_grad_norm(self._params)
        if self.scaler is None and self._any_rank(~torch.isfinite(norm)):  # type: ignore[arg-type]
            self._bad_grad_norm = float(norm)  # type: ignore[arg-type]
            return False, None
        if self.cfg.clip_grad_norm is not None:
            grad_norm = float(norm)  # type: ignore[arg-type]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return True, grad_norm

    def _skip_step(self, reason: str, micro: list["_MicroRecord"]) -> None:
        """Drop the step just counted (no update), say why, and stop after too many in a row.

        The scheduler still advances, so that the lr stays a function of the step count (as when
        a GradScaler skips a step); the EMA and ``on_step_end`` see no update; the counters are
        checkpointed, so a resumed run decides as an uninterrupted one would."""
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()" if the first step is skipped
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        self.nonfinite_in_a_row += 1
        self.nonfinite_total += 1
        what = "loss" if reason == "loss" else f"gradient (norm {self._bad_grad_norm})"
        limit = self.cfg.max_nonfinite_steps
        self.logger.warning("step %d skipped: non-finite %s; no update (%d in a row, limit %d; %d skipped in this run)",
                            self.step, what, self.nonfinite_in_a_row, limit, self.nonfinite_total)
        # a bad loss: the micro-batches whose loss was bad; a bad gradient: all of them
        mine = [(i, m) for i, m in enumerate(micro) if m.loss_bad or reason != "loss"]
        lines = [f"rank {self.rank} micro-batch {i + 1}/{len(micro)}: {m.describe()}" for i, m in mine]
        for rank_lines in D.all_gather_object(lines):  # every rank is here: the decision was collective
            for line in rank_lines:
                self.logger.warning("step %d skipped: %s", self.step, line)
        if self.nonfinite_in_a_row >= limit:
            msg = (f"training stopped at step {self.step}: {self.nonfinite_in_a_row} steps in a row had a non-finite "
                   f"loss or gradient (max_nonfinite_steps={limit}; their loss terms and sample ids are in the "
                   f"warnings above). Last checkpoint: {self._last_checkpoint()}")
            self.logger.warning("%s", msg)
            raise NonFiniteError(msg)

    def _log_metrics(self, window_logs: list[dict[str, float]], samples: int, elapsed: float,
                     data_time: float, compute_time: float, steps: int) -> dict[str, Any]:
        keys = sorted({k for d in window_logs for k in d})
        # each key over the steps that have it (a skipped step logs only its lr)
        means = torch.tensor([_mean([d[k] for d in window_logs if k in d]) for k in keys],
                             dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        means = D.all_reduce_mean(means)
        values: dict[str, Any] = {k: float(v) for k, v in zip(keys, means.tolist())}
        values.update({
            "epoch": self.epoch,
            "samples_per_s": samples / elapsed if elapsed > 0 else 0.0,
            "data_time_s": data_time / max(1, steps),
            "compute_time_s": compute_time / max(1, steps),
            "samples_seen": self.samples_seen,
            "skipped_steps": self.nonfinite_total,
        })
        self.logger.metrics(self.step, values)
        eta = (self.total_steps - self.step) * elapsed / max(1, steps)
        self.logger.info(
            "step %d/%d epoch %d | %s | lr %.3g | %.1f samples/s | data %.3fs compute %.3fs per step | eta %s",
            self.step, self.total_steps, self.epoch,
            " ".join(f"{k} {values[k]:.4g}" for k in keys if k != "lr"), values["lr"], values["samples_per_s"],
            values["data_time_s"], values["compute_time_s"], _fmt_eta(eta),
        )
        return values


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _total_grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of all gradients together (0 if there are none)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6: fused per-device norms
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads]))


@dataclass
class _MicroRecord:
    """What a skipped step's warning says about one micro-batch."""

    logs: dict[str, float]
    ids: Any
    loss_bad: bool

    def describe(self) -> str:
        terms = " ".join(f"{k}={v:.6g}" for k, v in self.logs.items()) or "no scalar outputs"
        ids = "unknown (the batch carries no sample_ids)" if self.ids is None else _as_list(self.ids)
        return f"{terms}; sample ids {ids}"


def _as_list(ids: Any) -> list:
    if isinstance(ids, torch.Tensor):
        return ids.tolist()
    return list(ids) if isinstance(ids, (list, tuple)) else [ids]


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"

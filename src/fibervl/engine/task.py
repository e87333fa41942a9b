"""The contract between the trainer and a task (the trainer knows no task and no model).

A task is any object with::

    training_step(model, batch) -> dict[str, Tensor]

``model`` is the plain (unwrapped) ``nn.Module``; ``batch`` is what the DataLoader yields, already
moved to the training device (tensors inside dicts/lists/tuples are moved, anything else is left
alone). The returned dict must hold ``"loss"``, a scalar tensor that is *averaged over the
micro-batch* (the trainer divides it by the number of accumulation micro-steps). Every other scalar
tensor or number in the dict is logged (averaged over the logging interval and over ranks); every
rank must return the same keys. Non-scalar entries are ignored.

Optional members:

* ``on_step_end(model, step) -> None``: called after every optimizer step (``step`` counts from 1),
  e.g. to clamp a temperature or update a momentum encoder.
* ``state_dict() / load_state_dict(d)``: extra task state saved in checkpoints (tensors and
  primitive containers only). A task that is an ``nn.Module`` is moved to the device, its
  buffers (e.g. an ITC :class:`~fibervl.tasks.objectives.FeatureQueue`) are checkpointed, and its
  trainable parameters, if any, are optimised under the name prefix ``task.``.
* ``batch_size(batch) -> int``: number of samples in a batch, for throughput. Default: the first
  dimension of the first tensor found in the batch.
* ``sample_ids(batch) -> list``: ids of the batch's samples, named in the warning about a step
  skipped for a non-finite loss or gradient. Default (:func:`batch_sample_ids`): a batch's
  ``sample_ids`` entry (dict) or attribute (any other object), else its ``image_ids``.

The whole ``training_step`` runs inside one ``DistributedDataParallel.forward`` call, so a task
may call several model methods (dual-encoder pass, fusion pass, ...) in one step.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Task(Protocol):
    def training_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]: ...


def default_batch_size(batch: Any) -> int:
    """First dimension of the first tensor found (depth-first) in ``batch``; 0 if none."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim > 0 else 1
    if isinstance(batch, dict):
        for v in batch.values():
            n = default_batch_size(v)
            if n:
                return n
    if isinstance(batch, (list, tuple)):
        for v in batch:
            n = default_batch_size(v)
            if n:
                return n
    return 0


# Where a batch carries the ids of its samples, in order of preference.
SAMPLE_ID_FIELDS = ("sample_ids", "image_ids")


def batch_sample_ids(task: Any, batch: Any) -> Any:
    """The ids of ``batch``'s samples (a list or tensor), or None if the batch carries none.

    The task's ``sample_ids(batch)`` if it has one; else the first of :data:`SAMPLE_ID_FIELDS`
    that the batch holds as a dict entry or an attribute. A collator makes its batches
    identifiable by adding a ``sample_ids`` entry (any list; the trainer leaves non-tensors on
    the CPU)."""
    if callable(getattr(task, "sample_ids", None)):
        return task.sample_ids(batch)
    for name in SAMPLE_ID_FIELDS:
        ids = batch.get(name) if isinstance(batch, dict) else getattr(batch, name, None)
        if ids is not None:
            return ids
    return None


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside nested dicts/lists/tuples to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch

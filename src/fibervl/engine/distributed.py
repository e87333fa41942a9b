"""Process-group setup and collectives that degrade to no-ops in a single process.

Launch with ``torchrun --nproc_per_node N script.py``; :func:`init_distributed` reads the torchrun
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and picks
NCCL when the device is CUDA, gloo otherwise. Without those variables everything runs as rank 0 of
a world of 1 and every collective returns its input.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return get_rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(device: str = "auto") -> torch.device:
    """This rank's device for a run's ``device`` setting: ``"auto"`` (CUDA if available, else
    CPU), ``"cpu"`` or ``"cuda"`` (the GPU of ``LOCAL_RANK``). No side effects."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but CUDA is not available")
    return torch.device("cuda", get_local_rank()) if device == "cuda" else torch.device("cpu")


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> torch.device:
    """Initialise the default process group from torchrun variables; return this rank's device
    (:func:`resolve_device`). Backend: NCCL for CUDA, gloo for CPU. Safe to call twice and in a
    plain single process (no group is made).
    """
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    return dev


def destroy_distributed() -> None:
    """Tear the process group down on every rank together: a rank that destroys it while
    another is still inside a gloo collective can abort that rank at exit (SIGABRT,
    "terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# What gloo and NCCL say when a collective has lost another rank (lower case)
_LOST_RANK_SIGNS = ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out",
                    "communicator was aborted", "remote process exited")


def lost_another_rank(error: BaseException) -> bool:
    """Whether ``error`` says a collective lost another rank: it died (a SIGKILL closes its
    connections at once) or did not answer within the process group's timeout."""
    text = str(error).lower()
    return isinstance(error, getattr(dist, "DistNetworkError", ())) or any(sign in text for sign in _LOST_RANK_SIGNS)


def stopped_worker_message(error: BaseException, steps_done: int, checkpoint: Path | None,
                           ckpt_root: str | Path) -> str:
    """What a rank says when training stops on ``error`` in a multi-process run: whether another
    worker died, and how to go on from the last checkpoint (``checkpoint``, or None)."""
    first_line = (str(error).strip().splitlines() or [""])[0]
    if lost_another_rank(error):
        why = (f"another worker died or stopped answering ({type(error).__name__}: {first_line}); torchrun's "
               "summary names the rank that failed first")
    else:
        why = f"{type(error).__name__}: {first_line}"
    if checkpoint is None:
        how = f"No checkpoint has been written in {ckpt_root} yet: the run must start again."
    else:
        how = (f"The last checkpoint is {checkpoint}. To continue from it, start the same command again with "
               "--resume (resume=auto); with the same settings the run goes on exactly as if uninterrupted.")
    return f"rank {get_rank()} stopped in step {steps_done + 1}: {why}. {how}"


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from ``src`` to every rank (identity in a single process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """List of every rank's ``obj`` in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (a copy; identity in a single process)."""
    if not is_distributed():
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / get_world_size()


def max_over_ranks(value: int, device: torch.device | str = "cpu") -> int:
    """The largest ``value`` over ranks (collective; ``value`` itself in a single process).
    ``device`` must suit the backend (CUDA for NCCL)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    size = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def _all_gather_padded(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """all_gather along dim 0 allowing a different first dimension on every rank."""
    max_n = max(sizes)
    if x.shape[0] < max_n:
        pad = x.new_zeros((max_n - x.shape[0], *x.shape[1:]))
        x_p = torch.cat([x, pad], dim=0)
    else:
        x_p = x.contiguous()
    parts = [torch.empty_like(x_p) for _ in sizes]
    dist.all_gather(parts, x_p)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` [n_r, ...] along dim 0 in rank order -> [sum n_r, ...].

    No gradient. Ranks may hold different ``n_r``. Identity in a single process.
    """
    if not is_distributed():
        return x
    return _all_gather_padded(x, _gather_sizes(x.shape[0], x.device))


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        sizes = _gather_sizes(x.shape[0], x.device)
        rank = get_rank()
        ctx.start = sum(sizes[:rank])
        ctx.n = sizes[rank]
        ctx.sizes = sizes
        return _all_gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # Every rank's loss depends on this rank's slice: sum their gradients, keep ours.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.start + ctx.n]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` [n_r, ...] in rank order -> [sum n_r, ...], differentiably.

    The backward pass sums the gradient of the gathered tensor over ranks (all-reduce) and returns
    this rank's slice, so with DDP's gradient averaging the parameters receive exactly the gradient
    of the mean of the per-rank losses, as a single process computing the same loss on the global
    batch would (the open_clip ``gather_with_grad`` scheme, rows local, columns global).
    Ranks may hold different ``n_r``. Identity (and ordinary autograd) in a single process.
    """
    if not is_distributed():
        return x
    return _AllGatherWithGrad.apply(x)


def rank_offset(n_local: int, device: torch.device | str = "cpu") -> int:
    """Index of this rank's first row in a rank-order gather of per-rank ``n_local`` rows.

    Collective (call on every rank). ``device`` must suit the backend (CUDA for NCCL).
    """
    if not is_distributed():
        return 0
    return sum(_gather_sizes(n_local, torch.device(device))[: get_rank()])


def rank_share(items: Sequence[Any], batch_size: int = 1) -> list[Any]:
    """This rank's share of ``items`` for an evaluation split across processes: cut into
    batches of ``batch_size`` (as one process would batch them), every ``world_size``-th batch
    from ``rank`` on, so that the shares are disjoint and cover ``items`` (nothing is padded, so
    nothing is evaluated twice; a DistributedSampler would repeat items to even the shares out).
    Batched the same way again, a share gives exactly batches of the one process (only the last
    batch of all is short), so a model whose numbers depend on a batch's other members gives
    the same results to the last bit. All of them in one process."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    starts = range(get_rank() * batch_size, len(items), get_world_size() * batch_size)
    return [item for start in starts for item in items[start:start + batch_size]]


def gather_dicts(part: dict) -> dict:
    """The union of every rank's ``part`` (keys are expected to be disjoint: :func:`rank_share`);
    ``part`` itself in one process. Collective."""
    out: dict = {}
    for d in all_gather_object(part):
        out.update(d)
    return out


def _share_positions(n: int, batch_size: int) -> list[list[int]]:
    """Per rank, the item indices of its :func:`rank_share` of ``n`` items, in its share's order."""
    world = get_world_size()
    return [[i for start in range(rank * batch_size, n, world * batch_size) for i in range(start, min(start + batch_size, n))]
            for rank in range(world)]


def gather_shares(share_results: Sequence[Any], n: int, batch_size: int = 1) -> list[Any]:
    """The results of every rank's :func:`rank_share` of ``n`` items (``batch_size`` as given to
    it) -> all ``n`` results in item order, as one process computing them all would list them.
    ``share_results``: this rank's, one per item of its share, in the share's order; any
    picklable objects (tensors included). Collective; ``list(share_results)`` in one process."""
    if not is_distributed():
        return list(share_results)
    out: list[Any] = [None] * n
    for rank, (part, positions) in enumerate(zip(all_gather_object(list(share_results)), _share_positions(n, batch_size))):
        if len(part) != len(positions):
            raise RuntimeError(f"rank {rank} returned {len(part)} results for its share of {len(positions)} of {n} items")
        for i, result in zip(positions, part):
            out[i] = result
    return out


def gather_share_rows(rows: torch.Tensor, n: int, batch_size: int = 1) -> torch.Tensor:
    """:func:`gather_shares` for a tensor: ``rows`` [n_r, ...], one row per item of this rank's
    share of ``n`` items -> [n, ...] in item order, on ``rows``' device. Collective; ``rows``
    itself in one process. (Gathered as pickled objects, so it works for CPU tensors whatever the
    backend, and for any row count per rank, including none.)"""
    if not is_distributed():
        return rows
    gathered = all_gather_object(rows)
    positions = _share_positions(n, batch_size)
    for rank, (part, pos) in enumerate(zip(gathered, positions)):
        if part.shape[0] != len(pos):
            raise RuntimeError(f"rank {rank} returned {part.shape[0]} rows for its share of {len(pos)} of {n} items")
    parts = [(p.to(rows.device), pos) for p, pos in zip(gathered, positions) if pos]
    if not parts:
        return rows
    out = torch.empty((n, *parts[0][0].shape[1:]), dtype=parts[0][0].dtype, device=rows.device)
    for part, pos in parts:
        out[torch.tensor(pos, device=rows.device)] = part
    return out


def computed_once(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` computed on rank 0 alone and its result sent to every rank (for a
    metric that is costly to compute, e.g. pycocotools' AP, or that runs external programs).
    When it raises on rank 0, every rank raises (rank 0 its own error, the others a
    RuntimeError naming it) instead of waiting for a result. Collective; a plain call in one process."""
    if not is_distributed():
        return fn(*args, **kwargs)
    result, error = None, None
    if get_rank() == 0:
        try:
            result = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - every rank must learn of it, then it is raised again
            error = e
    failed = broadcast_object(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if failed is not None:
        raise RuntimeError(f"rank 0 failed to compute {getattr(fn, '__name__', fn)}: {failed}")
    return broadcast_object(result)

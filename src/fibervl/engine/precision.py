"""Which autocast precision a run uses.

``precision`` in a run's config is "fp32", "bf16", "fp16" or "auto". "auto" (the presets' and the
shipped configs' choice) takes bf16 where bf16 matmuls are fast and fp32 elsewhere, because the
difference is not a few percent: on a CPU with AVX512-BF16 or AMX, bf16 autocast trains 2-2.5x
faster than fp32; on a CPU without them (e.g. AVX2-only or plain AVX), PyTorch falls back to a
bf16 matmul hundreds of times slower than fp32 (0.26 against 91 GFLOP/s, measured on such a
machine), and a bf16 run would take hours instead of minutes.

On CUDA the answer is ``torch.cuda.is_bf16_supported()``. On a CPU whose ``/proc/cpuinfo``
lists its instruction sets (Linux), it is whether they include native bf16 arithmetic
(``avx512_bf16`` or ``amx_bf16`` on x86, ``bf16`` on Arm): a property of the hardware, so that
two runs of one config on one host train in the same precision whatever else the host is doing
(a timed measurement under load once chose fp32 on a host where bf16 is 3.9x faster, and the
run's numbers changed with it). Elsewhere it is measured once per
process: a 256 x 512 x 512 matmul in both precisions, the fastest of several interleaved runs of
each after a warm-up call of each (a few milliseconds where bf16 is fast, about 0.2 s where it is
not). The fastest, not the median: on a shared machine another process only ever adds time, and
under load the median of five put a host whose bf16 is 2.5x faster below the 1.3x threshold, so
that it trained in fp32. The environment variable ``FIBERVL_AUTO_PRECISION`` (fp32 or bf16)
overrides the measurement, e.g. to make timings comparable across machines.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from contextlib import ExitStack, contextmanager, nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .distributed import resolve_device

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
ENV_OVERRIDE = "FIBERVL_AUTO_PRECISION"
# bf16 must be at least this much faster than fp32 to be chosen on the CPU: a bf16 step also
# converts weights and activations, so a matmul merely as fast as fp32 makes the step slower.
_MIN_CPU_SPEEDUP = 1.3


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@functools.lru_cache(maxsize=None)
def cpu_bf16_speedup(runs: int = 9) -> float:
    """fp32 time / bf16 time of a 256 x 512 x 512 matmul on this CPU (> 1: bf16 is faster): the
    fastest of ``runs`` interleaved calls of each, after a warm-up call (which picks a kernel)."""
    a, b = torch.randn(256, 512), torch.randn(512, 512)
    a16, b16 = a.bfloat16(), b.bfloat16()
    # A warm-up call of each first: the first bf16 matmul of a process also builds its kernel,
    # which can take 0.1 s on a bf16 host and would make it look emulated.
    _seconds(lambda: a @ b)
    _seconds(lambda: a16 @ b16)
    fp32 = min(_seconds(lambda: a @ b) for _ in range(3))
    # Where bf16 is emulated a call takes ~0.05 s, and two are enough to say so.
    slow = min(_seconds(lambda: a16 @ b16) for _ in range(2))
    if slow > 50 * fp32 + 0.01:
        return fp32 / slow
    fp32_times, bf16_times = [], []
    for _ in range(runs):  # interleaved: a burst of load slows both alike
        fp32_times.append(_seconds(lambda: a @ b))
        bf16_times.append(_seconds(lambda: a16 @ b16))
    return min(fp32_times) / min(bf16_times)


# Instruction-set names of native bf16 arithmetic, as /proc/cpuinfo spells them: x86's "flags"
# (AVX512-BF16 dot products, AMX tiles) and Arm's "Features" (BFDOT / BFMMLA).
BF16_INSTRUCTIONS = ("avx512_bf16", "amx_bf16", "bf16")
CPUINFO = "/proc/cpuinfo"


def bf16_instructions_in(cpuinfo: str) -> tuple[str, ...] | None:
    """The native bf16 instruction sets a ``/proc/cpuinfo`` text lists (empty: none), or None
    when it lists no instruction sets at all (no ``flags`` / ``Features`` line)."""
    listed: set[str] = set()
    found_line = False
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            found_line = True
            listed.update(value.split())
    if not found_line:
        return None
    return tuple(name for name in BF16_INSTRUCTIONS if name in listed)


@functools.lru_cache(maxsize=None)
def cpu_bf16_instructions() -> tuple[str, ...] | None:
    """:func:`bf16_instructions_in` of this machine's ``/proc/cpuinfo``; None where it cannot be
    read (not Linux) or lists no instruction sets."""
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            return bf16_instructions_in(f.read())
    except OSError:
        return None


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether bf16 autocast speeds up training on ``device`` (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    native = cpu_bf16_instructions()
    if native is not None:
        return bool(native)
    return cpu_bf16_speedup() >= _MIN_CPU_SPEEDUP


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """The precision a run with ``precision`` uses on ``device``: "auto" becomes "bf16" or
    "fp32"; an explicit value is kept (explicit bf16 on a CPU where it is slow is logged)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        forced = os.environ.get(ENV_OVERRIDE, "").strip()
        if forced:
            if forced not in ("fp32", "bf16"):
                raise ValueError(f"{ENV_OVERRIDE} must be fp32 or bf16, got {forced!r}")
            return forced
        return "bf16" if bf16_is_fast(device) else "fp32"
    if precision == "bf16" and torch.device(device).type == "cpu" and not bf16_is_fast(device):
        log.warning("precision=bf16 on a CPU without native bf16 arithmetic (%s): training will be slow; "
                    "precision=auto chooses fp32 here", auto_reason(device))
    return precision


def auto_reason(device: torch.device | str) -> str:
    """Why "auto" resolves as it does on ``device``, for a run's log ("auto: CPU bf16
    instructions amx_bf16", or where the CPU lists none "auto: bf16 matmul 2.1x fp32")."""
    if os.environ.get(ENV_OVERRIDE, "").strip():
        return f"auto, set by {ENV_OVERRIDE}"
    if torch.device(device).type != "cpu":
        return "auto"
    native = cpu_bf16_instructions()
    if native is not None:
        return f"auto: CPU bf16 instructions {', '.join(native)}" if native else "auto: no bf16 instructions on this CPU"
    return f"auto: bf16 matmul {cpu_bf16_speedup():.2g}x fp32"


def uses_bf16(precision: str, device: str = "auto") -> bool:
    """Whether a run configured with ``precision`` and ``device`` ("auto", "cpu", "cuda")
    evaluates under bf16 autocast."""
    return resolve_precision(precision, resolve_device(device)) == "bf16"


def autocast(precision: str, device: torch.device | str):
    """The autocast context of a resolved ``precision`` ("fp32": none)."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def eval_autocast(device: torch.device | str, bf16: bool):
    """The autocast context of evaluation and prediction, whose settings carry the resolved
    precision as a flag (:func:`uses_bf16`): bf16 autocast when ``bf16``, none otherwise."""
    return autocast("bf16" if bf16 else "fp32", device)


def autocast_disabled(device: torch.device | str):
    """Autocast switched off inside, whatever autocast is open outside: for the computations that
    must stay fp32 under a bf16 run (similarities divided by a small temperature, whose small
    differences bf16's 8-bit mantissa would round away before the softmax)."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


@contextmanager
def training_forward(precision: str, device: torch.device):
    """The context of a training forward pass: :func:`autocast`, and on the CPU attention on
    the math path of ``F.scaled_dot_product_attention``.

    Why: PyTorch's fused CPU attention kernel is fast forward but slow backward on the short
    sequences these models attend over (Swin windows, captions, cross-attention to a few dozen
    image tokens): one fiber-tiny ITM step on cached prefixes spends a third of its time there.
    The math path (matmul, softmax, matmul, differentiated as such) computes the same attention;
    a full fiber-tiny retrieval step (ITC + ITM, batch 32) takes 0.38 s instead of 0.52 s in
    bf16 (``bench/finetune_step.py``, BENCHMARKS.md), a coarse pre-training step 0.48 s instead
    of 0.50 s in fp32. Evaluation keeps the fused kernel, which is faster forward.
    """
    with ExitStack() as stack:
        stack.enter_context(autocast(precision, device))
        if torch.device(device).type == "cpu":
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        yield

"""Keep freed memory in the process rather than handing it back to the operating system.

glibc's malloc serves a large request (above a threshold that adapts up to 32 MiB) with a fresh
``mmap`` and unmaps it on ``free``; memory freed at the top of the heap is also trimmed away.
A tensor of that size therefore starts on fresh pages, and the first write to each 4 KiB page
is a page fault answered by the kernel zeroing the page. A fused forward of ``fiber-base``
(batch 2, 384 px) took 50,000-60,000 such faults; on 37 MB tensors (Swin stage 1) GELU ran at
560 M elements/s and a copy at 620, against 2,700 and 4,500 once the memory was re-used
(2 cores of an AMD EPYC; BENCHMARKS.md).

:func:`keep_freed_memory` sets ``M_MMAP_MAX`` to 0 (every allocation comes from the heap) and
``M_TRIM_THRESHOLD`` to 2 GiB (freed heap memory waits for the next allocation). The process
then keeps its peak memory resident, as it would with jemalloc or tcmalloc, the allocators
PyTorch's CPU performance guide recommends for the same reason. The ``fibervl`` command and the
benchmarks call it at start; a library import never does. ``FIBERVL_SYSTEM_MALLOC=1`` leaves
malloc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD_BYTES = 2**31 - 1  # mallopt takes an int
ENV_OPT_OUT = "FIBERVL_SYSTEM_MALLOC"


def _glibc():
    """glibc as a ``ctypes`` library, or None where the C library is another one."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: musl has mallopt as a no-op stub
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Make this process's malloc re-use freed memory instead of unmapping it (see the module
    docstring). Returns whether the setting was applied: False off glibc, or with
    ``FIBERVL_SYSTEM_MALLOC=1``. Safe to call more than once."""
    if os.environ.get(ENV_OPT_OUT, "").strip() not in ("", "0"):
        return False
    libc = _glibc()
    if libc is None:
        return False
    # mallopt returns 1 on success, 0 on failure.
    applied = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES) == 1
    if not applied:
        log.warning("mallopt refused the setting: large tensors keep paying page faults")
    return applied

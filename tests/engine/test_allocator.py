"""keep_freed_memory: a large buffer allocated again after a free does not fault in fresh pages."""

import json
import subprocess
import sys

import pytest

from fibervl.engine import allocator

# Allocate, write and free a 64 MiB tensor many times, then count the page faults of ten more
# rounds: with glibc's defaults each buffer is a fresh mmap (16,384 pages to fault in every
# round); with keep_freed_memory the rounds re-use freed heap memory. The first few rounds may
# still grow the heap (small allocations between them can take a piece of a freed buffer): up to
# five rounds in six trials of a fresh virtual environment, where three warm-up rounds made the
# test fail one time in three.
PROBE = """
import json, resource, sys, torch
from fibervl.engine.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
n = 16 * 2**20  # float32: 64 MiB
for _ in range(30):
    torch.ones(n)
before = faults()
for _ in range(10):
    torch.ones(n)
print(json.dumps({"applied": applied, "faults": faults() - before}))
"""


def probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(allocator._glibc() is None, reason="mallopt is glibc's")
def test_a_freed_large_buffer_is_reused_without_page_faults():
    default, kept = probe("default"), probe("keep")
    assert default["faults"] > 10_000  # the probe can see the faults it is about
    assert kept["applied"] and kept["faults"] < 1_000


def test_the_environment_opts_out(monkeypatch):
    monkeypatch.setenv(allocator.ENV_OPT_OUT, "1")
    assert allocator.keep_freed_memory() is False

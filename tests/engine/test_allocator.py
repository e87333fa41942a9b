"""keep_freed_memory: a large buffer allocated again after a free does not fault in fresh pages."""

import json
import subprocess
import sys

import pytest

from fibervl.engine import allocator

# Allocate, write and free a 64 MiB tensor a few times, then count the page faults of doing it
# once more: with glibc's defaults each buffer is a fresh mmap (16,384 pages to fault in); with
# keep_freed_memory it re-uses the memory of the earlier ones (the second allocation may still
# grow the heap: small allocations can take a piece of the first freed buffer).
PROBE = """
import json, resource, sys, torch
from fibervl.engine.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
n = 16 * 2**20  # float32: 64 MiB
for _ in range(3):
    torch.ones(n)
before = faults()
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

"""What the bench smoke tests share: run a bench script with ``--write`` into a markdown file
whose section it must replace."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def load_bench():
    """``load_bench(name)``: the module ``bench/NAME.py``, imported from its file."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def run_bench_into_section(tmp_path):
    """``run(script, section, *args, timeout=600) -> str``: runs ``bench/SCRIPT`` with ``args`` and
    ``--write`` into a file holding ``section``'s old block between two other lines; returns the file's
    text after asserting that the old block is gone and the lines around it are kept."""

    def run(script: str, section: str, *args: str, timeout: int = 600) -> str:
        out = tmp_path / "BENCH.md"
        out.write_text(f"# Benchmarks\n\nbefore\n\n<!-- bench:{section} -->\nold table\n<!-- /bench:{section} -->\n\nafter\n")
        subprocess.run([sys.executable, str(ROOT / "bench" / script), *args, "--write", str(out)],
                       check=True, capture_output=True, text=True, timeout=timeout)
        text = out.read_text()
        assert "old table" not in text and "before" in text and "after" in text
        return text

    return run

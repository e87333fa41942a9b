"""bench/export.py runs end to end and writes its section of a markdown file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="bench/export.py needs onnxruntime: pip install 'fibervl[export]'")

ROOT = Path(__file__).resolve().parents[2]


def test_export_bench_writes_its_section(tmp_path):
    out = tmp_path / "BENCH.md"
    out.write_text("# Benchmarks\n\n<!-- bench:export -->\nold table\n<!-- /bench:export -->\n\nafter\n")
    subprocess.run([sys.executable, str(ROOT / "bench" / "export.py"), "--presets", "fiber-tiny", "--runs", "1",
                    "--batches", "2", "--write", str(out)], check=True, capture_output=True, text=True, timeout=600)
    text = out.read_text()
    assert "old table" not in text and "after" in text
    rows = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| fiber-tiny |")]
    assert [r[1].strip() for r in rows] == ["image (128)", "text"]
    for r in rows:
        median, fastest = (float(v.strip("()")) for v in r[4].split())
        assert r[3].strip() == "2" and median >= fastest > 0 and float(r[7]) < 1e-4

"""bench/export.py runs end to end and writes its section of a markdown file."""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime", reason="bench/export.py needs onnxruntime: pip install 'fibervl[export]'")


def test_export_bench_writes_its_section(run_bench_into_section):
    text = run_bench_into_section("export.py", "export", "--presets", "fiber-tiny", "--runs", "1", "--batches", "2")
    rows = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| fiber-tiny |")]
    assert [r[1].strip() for r in rows] == ["image (128)", "text"]
    for r in rows:
        median, fastest = (float(v.strip("()")) for v in r[4].split())
        assert r[3].strip() == "2" and median >= fastest > 0 and float(r[7]) < 1e-4

"""bench/forward.py runs end to end and writes its section of a markdown file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fibervl.engine.precision import bf16_is_fast

ROOT = Path(__file__).resolve().parents[2]


def test_forward_bench_writes_its_section(tmp_path):
    out = tmp_path / "BENCH.md"
    out.write_text("# Benchmarks\n\nbefore\n\n<!-- bench:forward -->\nold table\n<!-- /bench:forward -->\n\nafter\n")
    subprocess.run([sys.executable, str(ROOT / "bench" / "forward.py"), "--presets", "fiber-tiny", "--runs", "1",
                    "--write", str(out)], check=True, capture_output=True, text=True, timeout=600)
    text = out.read_text()
    assert "old table" not in text and "before" in text and "after" in text
    rows = [line for line in text.splitlines() if line.startswith("| fiber-tiny |")]
    modes = [row.split(" | ")[1] for row in rows]
    expected = ["fp32", "fp32, its linear layers alone"]
    if bf16_is_fast("cpu"):
        expected += ["bf16 autocast (fp32 weights)", "bf16 weights", "bf16 weights, its linear layers alone"]
    assert modes == expected
    for row in rows:
        cells = row.strip("|").split(" | ")
        assert float(cells[2]) > 0 and float(cells[3]) > 0 and "% of" in cells[6]

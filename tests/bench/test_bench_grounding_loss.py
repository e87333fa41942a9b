"""bench/grounding_loss.py runs end to end and writes its section of a markdown file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_grounding_loss_bench_writes_its_section(tmp_path):
    out = tmp_path / "BENCH.md"
    out.write_text("before\n\n<!-- bench:grounding_loss -->\nold\n<!-- /bench:grounding_loss -->\n\nafter\n")
    subprocess.run([sys.executable, str(ROOT / "bench" / "grounding_loss.py"), "--batch", "2", "--runs", "1",
                    "--rounds", "1", "--write", str(out)], check=True, capture_output=True, text=True, timeout=300)
    text = out.read_text()
    assert "old" not in text.split("<!-- bench:grounding_loss -->")[1] and "before" in text and "after" in text
    rows = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| 2 |")]
    assert [row[1] for row in rows] == ["off", "weight 4"]
    assert all(float(row[2].strip(" |")) > 0 for row in rows)

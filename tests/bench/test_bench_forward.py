"""bench/forward.py runs end to end and writes its section of a markdown file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fibervl.engine.precision import bf16_is_fast


def test_forward_bench_writes_its_section(run_bench_into_section):
    text = run_bench_into_section("forward.py", "forward", "--presets", "fiber-tiny", "--runs", "1")
    rows = [line for line in text.splitlines() if line.startswith("| fiber-tiny |")]
    modes = [row.split(" | ")[1] for row in rows]
    expected = ["fp32", "fp32, its linear layers alone"]
    if bf16_is_fast("cpu"):
        expected += ["bf16 autocast (fp32 weights)", "bf16 weights", "bf16 weights, its linear layers alone"]
    assert modes == expected
    for row in rows:
        cells = row.strip("|").split(" | ")
        assert float(cells[2]) > 0 and float(cells[3]) > 0 and "% of" in cells[6]


def test_a_pythonpath_checkout_comes_before_the_repositorys_src(tmp_path):
    """A bench run with another checkout's src on PYTHONPATH times that checkout: importing
    bench/forward.py (which the other benches import) must not put this repository's src first."""
    root = Path(__file__).resolve().parents[2]
    other = tmp_path / "other" / "src"
    other.mkdir(parents=True)
    code = (f"import sys; sys.path.insert(0, {str(root / 'bench')!r}); import forward; "
            f"print(sys.path.index({str(other)!r}) < sys.path.index({str(root / 'src')!r}))")
    env = dict(os.environ, PYTHONPATH=str(other))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "True"

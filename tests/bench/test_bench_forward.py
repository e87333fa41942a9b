"""bench/forward.py runs end to end and writes its section of a markdown file."""

from __future__ import annotations

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

"""bench/grounding_loss.py runs end to end and writes its section of a markdown file."""


def test_grounding_loss_bench_writes_its_section(run_bench_into_section):
    text = run_bench_into_section("grounding_loss.py", "grounding_loss", "--batch", "2", "--runs", "1", "--rounds", "1",
                                  timeout=300)
    rows = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| 2 |")]
    assert [row[1] for row in rows] == ["off", "weight 4"]
    assert all(float(row[2].strip(" |")) > 0 for row in rows)

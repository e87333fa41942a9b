"""bench/fresh_scenes.py runs end to end and writes its section of a markdown file."""


def test_fresh_scenes_bench_writes_its_section(run_bench_into_section):
    text = run_bench_into_section("fresh_scenes.py", "fresh_scenes", "--scenes", "8", "--rounds", "1", timeout=300)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    for part in ("render", "token labels", "the whole item"):
        ms = float(rows[part].split(" | ")[1])
        assert ms > 0

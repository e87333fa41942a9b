"""``fibervl run --model all`` mechanics on a micro preset (2 steps per stage): the three families
share one data set, each runs its pre-training and its tasks, and the comparison table is written."""

import json
from pathlib import Path

from fibervl.mainjob.cli import run_comparison
from fibervl.mainjob.compare import COMPARED_TASKS
from fibervl.mainjob.presets import TASK_NAMES, DataPlan, JobPreset, StagePlan


def micro_preset() -> JobPreset:
    return JobPreset(name="micro", description="mechanics only", data=DataPlan(size=40), itc_steps=2,
                     coarse=StagePlan(steps=2, batch_size=4), fine=StagePlan(steps=2, batch_size=4),
                     tasks={t: StagePlan(steps=2, batch_size=4) for t in TASK_NAMES}, num_eval=8)


def test_comparison_of_the_three_families(tmp_path):
    lines = []
    per_family = run_comparison(micro_preset(), tmp_path, None, set(), None, lines.append)
    assert set(per_family) == {"fiber", "albef", "vlmo"}
    for family, results in per_family.items():
        assert set(results["tasks"]) == set(COMPARED_TASKS), family
        assert results["family"] == family
        assert Path(results["data"]) == tmp_path / "data"  # one data set for all three
    # VLMo's stages: image-only MIM, text-only MLM, then image-text
    assert all((tmp_path / "vlmo" / "stages" / "pretrain" / s / "model").is_dir() for s in ("mim", "text", "vl"))
    table = json.loads((tmp_path / "comparison.json").read_text())["rows"]
    assert [r["family"] for r in table] == ["fiber", "albef", "vlmo"]
    for row in table:
        assert row["parameters"] > row["fusion_parameters"] > 0
        assert row["fused_pair_gflops"] > 0 and row["pretrain_samples_per_s"] > 0
        assert all(row[t] is not None for t in COMPARED_TASKS)
    text = (tmp_path / "comparison.md").read_text()
    assert "| albef |" in text and "GFLOPs / fused pair" in text

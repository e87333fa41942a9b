"""Evaluation under torchrun: 2 gloo processes split the items of every task's evaluation
(retrieval with ITM re-ranking and the Table 4 modes, captioning, phrase grounding, referring
expressions, detection of seen and held-out classes, COCO, LVIS and ODinW files), gather what
the metric needs and give exactly the metrics and predictions of one process, each item run by
one process only (tests/tasks/eval_split_worker.py runs them all, once per world size)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
WORKER = HERE / "eval_split_worker.py"
# rendezvous on the loopback address only, on a free port torchrun picks
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0",
            "--nproc_per_node", "2"]
EVALUATIONS = ["retrieval", "caption", "grounding", "refexp", "detection_seen", "detection_zero_shot", "detection_coco",
               "detection_lvis", "detection_odinw"]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(HERE.parents[1] / "src"), OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def workdir(shapes_tiny, tmp_path_factory) -> Path:
    """The worker's output, once in one process and once in two: rank{r}_world{w}.json, the
    COCO / LVIS / Roboflow files it evaluated (layouts/) and its untrained detector (fine_model/)."""
    pytest.importorskip("pycocotools")
    out = tmp_path_factory.mktemp("eval_split")
    _run([sys.executable, str(WORKER), str(shapes_tiny), str(out)])
    _run([*TORCHRUN, str(WORKER), str(shapes_tiny), str(out)])
    return out


@pytest.fixture(scope="module")
def reports(workdir) -> tuple[dict, list[dict]]:
    """(one process's report, [rank 0's, rank 1's] of two processes)."""
    def load(name: str) -> dict:
        return json.loads((workdir / name).read_text())

    return load("rank0_world1.json"), [load("rank0_world2.json"), load("rank1_world2.json")]


@pytest.mark.parametrize("evaluation", EVALUATIONS)
def test_two_processes_give_the_metrics_of_one_running_each_item_once(evaluation, reports):
    one, ranks = reports
    single = one[evaluation]
    assert single["metrics"]
    for report in ranks:  # every rank returns what one process returns, to the last digit
        assert report[evaluation]["metrics"] == single["metrics"]
        assert report[evaluation].get("returned") == single.get("returned")
    # the model ran each image, text or pair once: the ranks' rows add up to one process's, both did part
    calls = [report[evaluation]["calls"] for report in ranks]
    for entry, rows in single["calls"].items():
        if entry == "caption_scores":
            continue
        assert calls[0].get(entry, 0) + calls[1].get(entry, 0) == rows, entry
        assert all(0 < c.get(entry, 0) < rows for c in calls), entry


def test_what_is_returned_covers_every_item(reports):
    one, _ = reports
    # 5 captioned images, in the order of the split; detections on all 5 images
    assert [p["image_id"] for p in one["caption"]["returned"]] == [p for p, _ in one["caption"]["metrics"]["per_image"]]
    assert len(one["caption"]["returned"]) == 5
    for evaluation in ("detection_seen", "detection_coco", "detection_lvis"):
        assert one[evaluation]["metrics"]["images"] == 5
        assert len({d["image_id"] for d in one[evaluation]["returned"]}) == 5
    assert one["retrieval"]["metrics"]["images"] == 5 and one["retrieval"]["metrics"]["itm/pairs"] == 5 * 25


def test_a_metric_is_computed_once_and_its_failure_reaches_every_rank(reports):
    one, ranks = reports
    # the caption scorer ran on rank 0 only and every rank has its scores
    assert one["caption"]["calls"]["caption_scores"] == 1
    assert [r["caption"]["calls"].get("caption_scores", 0) for r in ranks] == [1, 0]
    assert all(r["caption"]["metrics"]["scored_by_rank"] == 0 for r in ranks)
    assert one["metric_error"]["raised"] == "ValueError: no ground truth"
    assert ranks[0]["metric_error"]["raised"] == "ValueError: no ground truth"
    assert ranks[1]["metric_error"]["raised"] == "RuntimeError: rank 0 failed to compute broken_metric: ValueError: no ground truth"


def test_evaluate_detect_under_torchrun_prints_and_writes_once(workdir, shapes_tiny, tmp_path):
    """``fibervl evaluate detect --results`` in 2 processes: rank 0 alone prints the metrics and
    writes the results file, and both are those of one process (every image's detections once)."""
    coco = workdir / "layouts" / "coco"
    args = ["-m", "fibervl.cli", "evaluate", "detect", "--model", str(workdir / "fine_model"),
            "--tokenizer", str(shapes_tiny / "tokenizer"), "--eval-data",
            f"coco:{coco / 'annotations' / 'instances_val2017.json'}:{coco / 'val2017'}", "train.device=cpu",
            "data.chunk_size=2", "data.eval_batch_size=2"]
    one = _run([sys.executable, *args, "--results", str(tmp_path / "one.json")])
    two = _run([*TORCHRUN, *args, "--results", str(tmp_path / "two.json")])
    assert "Detection evaluation: rank 1 of 2 runs" in two.stderr
    printed = [json.loads(line) for line in two.stdout.splitlines() if line.startswith("{")]
    assert printed == [json.loads(one.stdout.splitlines()[-1])]  # once, the metrics of one process
    assert printed[0]["det_images"] == len(json.loads((coco / "annotations" / "instances_val2017.json").read_text())["images"])
    assert two.stderr.count("detections written to") == 1
    assert json.loads((tmp_path / "two.json").read_text()) == json.loads((tmp_path / "one.json").read_text())

"""Every data format through the command line: a tiny set in the official layout
(official_layouts.py) trains a step and is evaluated, by SPEC alone (--train-data / --eval-data).
Micro models; the numbers are not meaningful, the wiring is."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fibervl.cli import main
from fibervl.config import DetectionConfig
from fibervl.data.readers import VqaReader
from fibervl.data.sources import FORMATS
from fibervl.metrics.vqa import vqa_score
from fibervl.testing.configs import micro_config

RUN = ["train.batch_size=4", "train.max_steps=1", "train.progress_bar=false", "train.ckpt_every=null",
       "train.eval_every=null", "train.precision=fp32"]
FINE = ["data.num_eval=3", "data.eval_batch_size=4", "data.chunk_size=4", "data.max_classes=4"]


def _json_line(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _pairs(capsys) -> dict:
    """The metrics the fine-grained commands print last: a JSON object, or ``key=value`` pairs."""
    line = capsys.readouterr().out.strip().splitlines()[-1]
    if line.startswith("{"):
        return json.loads(line)
    return dict(re.findall(r"(\S+)=(\S+)", line))


@pytest.fixture(scope="module")
def coarse(official, shapes_tiny, tmp_path_factory):
    """``pretrain coarse`` from a preset alone on Karpathy captions mixed with webdataset shards."""
    root = tmp_path_factory.mktemp("coarse")
    (root / "preset").mkdir()
    micro_config().save(root / "preset" / "config.json")
    assert main(["pretrain", "coarse", "--train-data", official["karpathy"], "--train-data", official["webdataset"] + "@0.5",
                 "--eval-data", official["karpathy"], f"model.preset={root / 'preset'}",
                 f"data.tokenizer={shapes_tiny / 'tokenizer'}", f"train.run_dir={root / 'run'}", "data.num_eval=4",
                 *RUN]) == 0
    return root / "run"


def test_pretrain_coarse_mixes_karpathy_and_webdataset(coarse):
    metrics = json.loads((coarse / "metrics.json").read_text())
    assert {"i2t_r1", "t2i_r1"} <= set(metrics) and metrics["eval_split"] == "val"
    snapshot = yaml.safe_load((coarse / "config.yaml").read_text())
    assert [s["format"] for s in snapshot["data"]["train"]] == ["karpathy", "webdataset"]
    assert snapshot["data"]["train"][1]["weight"] == 0.5
    assert (coarse / "model" / "tokenizer").is_dir()


def test_retrieval_on_coco_captions(coarse, official, tmp_path, capsys):
    # the init model's own tokenizer is used: no data.tokenizer
    spec = official["coco_captions"]
    args = ["--train-data", spec, "--eval-data", spec, "data.train_split=train2017", "data.eval_split=val2017",
            "eval.rerank_k=2", "data.num_eval=4"]
    assert main(["finetune", "retrieval", "--init", str(coarse / "model"), f"--run-dir={tmp_path / 'run'}", *args, *RUN]) == 0
    assert "rerank_i2t_r1" in json.loads((tmp_path / "run" / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", "retrieval", "--model", str(tmp_path / "run"), *args]) == 0
    metrics = _json_line(capsys)
    assert metrics["split"] == "val2017" and metrics["images"] == 4


@pytest.fixture(scope="module")
def vqa_run(coarse, official, tmp_path_factory):
    """``finetune vqa`` on train2014 + val2014 (two sources), evaluated on val2014."""
    run = tmp_path_factory.mktemp("vqa") / "run"
    assert main(["finetune", "vqa", "--init", str(coarse / "model"), f"--run-dir={run}",
                 "--train-data", official["vqav2_train"], "--train-data", official["vqav2_val"] + "@0.5",
                 "--eval-data", official["vqav2_val"], "data.num_eval=6", *RUN]) == 0
    return run


def test_vqa_on_vqav2(vqa_run, official, tmp_path, capsys):
    snapshot = yaml.safe_load((vqa_run / "config.yaml").read_text())
    assert [(s["split"], s["weight"]) for s in snapshot["data"]["train"]] == [("train2014", 1.0), ("val2014", 0.5)]
    results = tmp_path / "answers.json"
    assert main(["evaluate", "vqa", "--model", str(vqa_run), "--eval-data", official["vqav2_val"],
                 "--num-eval", "5", "--results", str(results)]) == 0
    metrics = _json_line(capsys)
    assert metrics["questions"] == 5 and metrics["split"] == "val2014" and 0 <= metrics["vqa_acc"] <= 100
    # the results file, scored on its own, gives the printed accuracy
    rows = json.loads(results.read_text())
    assert all(set(r) == {"question_id", "answer"} and isinstance(r["question_id"], int) for r in rows)
    samples = list(VqaReader(_vqa_folder(official), "val2014"))[:5]
    assert vqa_score({str(r["question_id"]): r["answer"] for r in rows}, samples)["vqa_acc"] == \
        pytest.approx(metrics["vqa_acc"], abs=0.01)


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    """``fibervl ARGS`` under torchrun, 2 gloo processes on the loopback address."""
    src = Path(__file__).resolve().parents[2] / "src"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0",
           "--nproc_per_node", "2", "-m", "fibervl.cli", *args]
    res = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1"), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _shares(stderr: str, task: str, total: int) -> list[tuple[int, int, int]]:
    found = re.findall(rf"{task} evaluation: rank (\d) of 2 \w+ (\d+) of (\d+)", stderr)
    return sorted((int(r), int(n), int(t)) for r, n, t in found)


def test_evaluate_vqa_split_across_two_processes(vqa_run, official, tmp_path, capsys):
    """``evaluate vqa`` under torchrun (2 gloo processes): each answers its own half of the
    questions, and rank 0 prints the metrics and writes the answers one process gives."""
    args = ["evaluate", "vqa", "--model", str(vqa_run), "--eval-data", official["vqav2_val"], "train.device=cpu"]
    assert main([*args, "--results", str(tmp_path / "one.json")]) == 0
    one = _json_line(capsys)
    res = _torchrun([*args, "--results", str(tmp_path / "two.json")])
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and lines[0].pop("results") == str(tmp_path / "two.json")  # printed once, by rank 0
    assert lines[0] == {k: v for k, v in one.items() if k != "results"}  # the metrics of one process
    # each rank answers its own half (rank_share: disjoint, together all): nothing answered twice
    total = one["questions"]
    assert _shares(res.stderr, "VQA", total) == [(0, total - total // 2, total), (1, total // 2, total)]
    key = lambda r: r["question_id"]  # noqa: E731
    assert sorted(json.loads((tmp_path / "two.json").read_text()), key=key) == \
        sorted(json.loads((tmp_path / "one.json").read_text()), key=key)


def _vqa_folder(official) -> Path:
    return Path(official["vqav2_val"].split(":")[1])


def _test_dev(official, out: Path) -> list[int]:
    """VQAv2 test-dev2015 beside nothing else: a questions file without annotations, its images
    under coco/test2015/ (test-dev is a subset of test2015). Returns the question ids."""
    folder = _vqa_folder(official)
    qs = json.loads((folder / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    qs.update(data_subtype="test-dev2015")
    (out / "vqav2").mkdir(parents=True)
    (out / "vqav2" / "v2_OpenEnded_mscoco_test-dev2015_questions.json").write_text(json.dumps(qs))
    (out / "coco" / "test2015").mkdir(parents=True)
    for q in qs["questions"]:
        name = f"COCO_{{}}_{q['image_id']:012d}.jpg"
        shutil.copy(folder.parent / "coco" / "val2014" / name.format("val2014"),
                    out / "coco" / "test2015" / name.format("test2015"))
    return [q["question_id"] for q in qs["questions"]]


def test_vqa_test_dev_writes_answers_without_scoring(vqa_run, official, tmp_path, capsys, monkeypatch):
    ids = _test_dev(official, tmp_path)
    spec = f"vqav2,split=test-dev2015:{tmp_path / 'vqav2'}:{tmp_path / 'coco'}"
    results = tmp_path / "out" / "answers.json"
    assert main(["evaluate", "vqa", "--model", str(vqa_run), "--eval-data", spec, "--results", str(results)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert any("test-dev2015 has no annotations: not scored" in line for line in out[:-1])
    assert json.loads(out[-1]) == {"split": "test-dev2015", "questions": len(ids), "scored": False,
                                   "results": str(results)}
    rows = json.loads(results.read_text())
    answers = json.loads((vqa_run / "model" / "answers.json").read_text())
    assert sorted(r["question_id"] for r in rows) == sorted(ids) and all(r["answer"] in answers for r in rows)
    # without --results: the server's file name, in the current directory
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "vqa", "--model", str(vqa_run), "--eval-data", spec]) == 0
    assert json.loads((tmp_path / "vqa_OpenEnded_mscoco_test-dev2015_fibervl_results.json").read_text()) == rows


def test_finetune_vqa_on_train_and_val_answers_test_dev(coarse, official, tmp_path, capsys):
    ids = _test_dev(official, tmp_path)
    spec = f"vqav2,split=test-dev2015:{tmp_path / 'vqav2'}:{tmp_path / 'coco'}"
    run = tmp_path / "run"
    assert main(["finetune", "vqa", "--init", str(coarse / "model"), f"--run-dir={run}",
                 "--train-data", official["vqav2_train"], "--train-data", official["vqav2_val"],
                 "--eval-data", spec, *RUN]) == 0
    metrics = _json_line(capsys)
    assert metrics["questions"] == len(ids) and metrics["scored"] is False and "vqa_acc" not in metrics
    rows = json.loads((run / "vqa_OpenEnded_mscoco_test-dev2015_fibervl_results.json").read_text())
    assert sorted(r["question_id"] for r in rows) == sorted(ids)


def test_nlvr2_on_nlvr2(coarse, official, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["finetune", "nlvr2", "--init", str(coarse / "model"), f"--run-dir={run}",
                 "--train-data", official["nlvr2_train"], "--eval-data", official["nlvr2_dev"], *RUN]) == 0
    capsys.readouterr()
    args = ["evaluate", "nlvr2", "--model", str(run), "--eval-data", official["nlvr2_dev"], "train.device=cpu"]
    assert main(args) == 0
    metrics = _json_line(capsys)
    # a file that is one split is named by its file (dev.json), not by data.eval_split's default "val"
    assert metrics["items"] == 8 and metrics["split"] == "dev" and 0 <= metrics["nlvr2_acc"] <= 100
    # under torchrun: each of 2 processes scores its half, rank 0 prints the metrics of one process
    res = _torchrun(args)
    assert [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")] == [metrics]
    assert _shares(res.stderr, "NLVR2", 8) == [(0, 4, 8), (1, 4, 8)]


@pytest.fixture(scope="module")
def fine(official, shapes_tiny, tmp_path_factory):
    """``pretrain fine`` from a preset alone: MDETR Flickr30k (twice) mixed with Objects365,
    evaluated on COCO val2017."""
    pytest.importorskip("pycocotools")
    root = tmp_path_factory.mktemp("fine")
    micro = micro_config()
    preset = micro.replace(vision=dataclasses.replace(micro.vision, image_size=128, feature_norms=(1, 2, 3)), heads=(),
                           detection=DetectionConfig(channels=16, num_blocks=1, num_groups=4,
                                                     anchor_sizes=(16, 32, 64, 128, 256), max_query_len=16))
    (root / "preset").mkdir()
    preset.save(root / "preset" / "config.json")
    assert main(["pretrain", "fine", "--train-data", official["flickr_train"] + "@2", "--train-data", official["o365"],
                 "--eval-data", official["coco"], f"model.preset={root / 'preset'}",
                 f"data.tokenizer={shapes_tiny / 'tokenizer'}", f"train.run_dir={root / 'run'}", *RUN, *FINE]) == 0
    return root / "run"


def test_pretrain_fine_mixes_grounding_and_detection(fine):
    metrics = json.loads((fine / "metrics.json").read_text())
    assert "det_AP" in metrics and not any(k.startswith(("ground_", "rec_", "zs_")) for k in metrics)
    snapshot = yaml.safe_load((fine / "config.yaml").read_text())
    assert [(s["format"], s["weight"]) for s in snapshot["data"]["train"]] == [("mdetr", 2.0), ("o365", 1.0)]


@pytest.mark.parametrize("task,name,key", [("ground", "flickr_val", "ground_r1"), ("refexp", "refcoco_val", "rec_acc"),
                                           ("detect", "coco", "det_AP"), ("detect", "lvis", "det_AP"),
                                           ("detect", "odinw", "det_AP")])
def test_evaluate_fine_tasks_on_each_format(fine, official, task, name, key, capsys):
    args = ["evaluate", task, "--model", str(fine), "--eval-data", official[name], *FINE]
    fmt = FORMATS[official[name].split(":", 1)[0]]
    if not fmt.available:
        assert main(args) == 1
        assert "not available yet" in capsys.readouterr().err
        return
    assert main(args) == 0
    metrics = _pairs(capsys)
    assert key in metrics and not any(k.startswith("zs_") for k in metrics)


def test_finetune_refexp_on_refcoco(fine, official, tmp_path, capsys):
    # the init model's architecture and tokenizer: no model.preset, no data.tokenizer
    assert main(["finetune", "refexp", "--init", str(fine / "model"), f"--run-dir={tmp_path / 'run'}",
                 "--train-data", official["refcoco_train"],
                 "--eval-data", official["refcoco_val"], *RUN, *FINE]) == 0
    assert "rec_acc" in _pairs(capsys)
    # a detection file does not fit referring expressions: one error naming the source
    assert main(["finetune", "refexp", "--init", str(fine / "model"), f"model.preset={fine / 'model'}",
                 f"--run-dir={tmp_path / 'bad'}", "--train-data", official["coco_train"],
                 "--eval-data", official["refcoco_val"], *RUN, *FINE]) == 1
    assert "format 'coco' holds detection data" in capsys.readouterr().err

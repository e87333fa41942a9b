"""The command line: documented commands exist and fail clearly."""

from __future__ import annotations

import re
from pathlib import Path

from fibervl.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    test_line = next(line for line in readme.splitlines() if line.rstrip().endswith("# the tests"))
    command = re.sub(r"\s+#.*$", "", test_line).strip()
    assert command in (ROOT / ".ci" / "run").read_text()


def test_info_reports_official_fusion_counts(capsys):
    assert main(["info", "fiber-base"]) == 0
    out = capsys.readouterr().out
    assert "fusion i2t (in Swin blocks)          12,607,494" in out
    assert "official-layout fusion total 26,004,498" in out
    assert "matches exactly" in out


def test_info_unknown_model_is_an_error(capsys):
    assert main(["info", "fiber-giant"]) == 1
    assert "neither a model directory nor a preset" in capsys.readouterr().err


def test_run_rejects_unknown_stage_and_task(capsys, tmp_path):
    assert main(["run", "--out", str(tmp_path), "--redo", "vqq"]) == 2
    assert "unknown stage(s) ['vqq']" in capsys.readouterr().err
    assert main(["run", "--out", str(tmp_path), "--tasks", "vqa,ocr"]) == 2
    assert "unknown task(s) ['ocr']" in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "a rejected command must not start any stage"


def test_bad_config_key_names_it(capsys):
    assert main(["pretrain", "coarse", "train.max_stepz=3"]) == 1
    assert "train.max_stepz" in capsys.readouterr().err

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


def _help_of(argv, capsys) -> str:
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse and the config parser exit after printing help
        code = stop.code
    assert code == 0, argv
    return capsys.readouterr().out


def test_help_reaches_each_command(capsys):
    # a verb's own help names its NAMEs
    assert "retrieval" in _help_of(["predict", "-h"], capsys)
    # after NAME, -h is the recipe's: predict lists its flags, a config-driven command every key
    assert "--question" in _help_of(["predict", "vqa", "-h"], capsys)
    assert "--classes" in _help_of(["predict", "detect", "--help"], capsys)
    keys = _help_of(["finetune", "vqa", "-h"], capsys)
    for key in ("model.init", "data.image_template", "train.max_steps", "train.optim.lr_multipliers"):
        assert key in keys, key
    assert "train.run_dir" in _help_of(["pretrain", "coarse", "--help"], capsys)


def test_verb_without_name_is_an_error(capsys):
    try:
        code = main(["evaluate"])
    except SystemExit as stop:
        code = stop.code
    assert code == 2
    assert "give a NAME" in capsys.readouterr().err


def test_gpu_preset_without_a_gpu_stops_before_any_stage(capsys, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["run", "--preset", "gpu-small", "--out", str(tmp_path)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "no data may be generated for a run that cannot train"

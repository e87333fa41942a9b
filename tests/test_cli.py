"""The command line: documented commands exist and fail clearly."""

from __future__ import annotations

import json
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


# ---- the recipe commands, generated from the registry ------------------------------------

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RECIPE_VERBS = ("pretrain", "finetune", "evaluate", "predict")
PLACEHOLDERS = {"K": "5", "N": "100", "OBJ": "gold"}  # in the docs' command lines


def _documented_command_lines() -> list[tuple[str, str]]:
    """(where, command line) of every ``fibervl pretrain|finetune|evaluate|predict NAME ...`` in
    README.md and docs/*.md: in code blocks (continued over lines ending in a backslash) and in
    inline code."""
    found = []
    for path in DOCS:
        text = re.sub(r"\\\n\s*", " ", path.read_text(encoding="utf-8"))
        for number, line in enumerate(text.splitlines(), start=1):
            for match in re.finditer(rf"fibervl (?:{'|'.join(RECIPE_VERBS)}) [^`]*", line):
                found.append((f"{path.name}:{number}", re.sub(r"\s+#.*$", "", match.group(0)).strip()))
    return found


def _concrete(line: str) -> list[list[str]]:
    """A documented command line as argument lists: optional ``[...]`` parts kept (dropped when
    they only say "and so on"), the first of ``(A | B)`` alternatives, one list per NAME of
    ``ground|refexp|detect``."""
    import shlex

    line = re.sub(r"\[[^\[\]]*\.\.\.[^\[\]]*\]", " ", line)  # [key=value ...], [--text ...]
    line = re.sub(r"\(([^()|]*)\|[^()]*\)", r"\1", line)  # (--image x.jpg | --images DIR)
    line = re.sub(r"(^|\s)\[", r"\1", re.sub(r"\](\s|$)", r"\1", line))
    words = shlex.split(line)
    if len(words) < 4 or "-h" in words:  # a mention in prose ("use fibervl predict nlvr2"), a help call
        return []
    # "..." is a value after an option (--text "..."), else "and so on"; K, N, OBJ stand for values
    rest = [PLACEHOLDERS.get(w, w) for i, w in enumerate(words[3:], start=3)
            if w != "..." or words[i - 1].startswith("--")]
    rest = [re.sub(r"=(N|OBJ)$", lambda m: "=" + PLACEHOLDERS[m.group(1)], w) for w in rest]
    return [[words[1], name, *rest] for name in words[2].split("|")]


def _dry_parse(argv: list[str], tmp_path: Path) -> None:
    """Parse ``fibervl ARGV`` as the command would, without running it."""
    from fibervl.predict.cli import build_parser
    from fibervl.recipes.commands import parse
    from fibervl.recipes.registry import get_recipe

    verb, name, rest = argv[0], argv[1], list(argv[2:])
    if verb == "predict":
        build_parser(name).parse_args(rest)
        return
    for i, word in enumerate(rest):  # a config the docs name as an example: an empty one
        if word == "--config" and not (ROOT / rest[i + 1]).is_file():
            assert not rest[i + 1].startswith("configs/"), f"{rest[i + 1]} is not in the repository"
            empty = tmp_path / "empty.yaml"
            empty.write_text("{}\n", encoding="utf-8")
            rest[i + 1] = str(empty)
    parse(get_recipe(name), verb, rest)


def test_every_documented_recipe_command_parses(tmp_path, monkeypatch):
    """Users copy these lines into their scripts: each must still be a valid command (its
    options, aliases and keys; files it names need not exist)."""
    from fibervl.recipes import fine_tasks
    from fibervl.recipes.registry import recipes

    # the fine-grained tasks read the architecture of --init / --model: here only a placeholder
    monkeypatch.setattr(fine_tasks, "resolve_model_dir", Path)
    monkeypatch.chdir(ROOT)
    known = recipes()
    checked, failures = 0, []
    for where, line in _documented_command_lines():
        for argv in _concrete(line):
            if argv[1] not in known:  # "fibervl predict TASK", "NAME ...": a pattern, not a command
                continue
            try:
                _dry_parse(argv, tmp_path)
                checked += 1
            except (SystemExit, Exception) as err:  # noqa: BLE001 - every failure is listed below
                failures.append(f"{where}: {' '.join(argv)}\n    {type(err).__name__}: {err}")
    assert not failures, "\n".join(failures)
    assert checked > 80  # the docs hold about a hundred such lines


def test_every_recipe_has_its_commands_in_the_cli(capsys):
    from fibervl.cli import verb_names
    from fibervl.recipes.registry import recipes

    assert verb_names("pretrain") == ["image", "coarse", "fine", "albef", "vlmo"]
    tasks = ["retrieval", "vqa", "nlvr2", "caption", "ground", "refexp", "detect"]
    for verb in ("finetune", "evaluate", "predict"):
        assert verb_names(verb) == tasks
        assert ", ".join(tasks) in _help_of([verb, "-h"], capsys)
    assert set(recipes()) == {"image", "coarse", "fine", "albef", "vlmo", *tasks}


def test_help_is_generated_from_the_recipe(capsys):
    from fibervl.recipes.registry import recipes

    for name, recipe in recipes().items():
        for verb in recipe.verbs:
            if verb == "predict":
                continue
            text = _help_of([verb, name, "-h"], capsys)
            assert text.startswith(("evaluate a saved model: " if verb == "evaluate" else "") + recipe.summary)
            assert f"usage: fibervl {verb} {name} " in text
            # every friendly option with the key it sets, and every key
            for alias, key in recipe.aliases(verb).items():
                assert re.search(rf"^  {re.escape(alias)} V +{re.escape(key)}=V$", text, re.M), (verb, name, alias)
            assert ("--resume [PATH]" in text) == (verb != "evaluate"), (verb, name)
            assert "train.optim.lr " in text and "--train-data V" in text and "--skip-bad-records" in text
    # the config dataclass's own description
    assert "score the most frequent" in _help_of(["evaluate", "caption", "-h"], capsys)
    assert "--model V           model.init=V" in _help_of(["evaluate", "detect", "-h"], capsys)


def test_metrics_print_as_a_line_then_json_last(capsys):
    from fibervl.recipes.commands import print_metrics

    metrics = {"split": "test", "det_AP": 12.345678901234, "images": 3, "scored": True}
    print_metrics(metrics)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["split=test  det_AP=12.35  images=3  scored=True", json.dumps(metrics)]
    assert json.loads(lines[-1]) == metrics  # unrounded: what the results file scores to


def test_every_command_prints_its_metrics_as_json_last(capsys, monkeypatch):
    """``finetune`` and ``evaluate`` of any recipe end with the metrics as one JSON object, and
    only rank 0 of a torchrun prints them."""
    import dataclasses

    from fibervl.recipes import registry

    calls = []
    table = registry.recipes()

    def fake(name):
        def evaluate(cfg):
            calls.append((name, cfg.model.init))
            print("progress line")
            return {"split": cfg.data.eval_split, "acc": 1 / 3}
        return dataclasses.replace(table[name], evaluate=evaluate, run=lambda cfg: {"eval": evaluate(cfg)})

    monkeypatch.setattr(registry, "recipes", lambda: {n: fake(n) for n in table})
    assert main(["evaluate", "vqa", "--model", "m", "--split", "val2014"]) == 0
    assert main(["finetune", "retrieval", "--init", "i"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == json.dumps({"split": "val", "acc": 1 / 3}) and out[-2] == "split=val  acc=0.33"
    assert json.loads(out[2]) == {"split": "val2014", "acc": 1 / 3}
    assert calls == [("vqa", "m"), ("retrieval", "i")]
    monkeypatch.setenv("RANK", "1")
    assert main(["evaluate", "vqa", "--model", "m"]) == 0
    assert capsys.readouterr().out == "progress line\n"


def test_evaluate_without_a_model_says_so(capsys):
    for name in ("retrieval", "vqa", "nlvr2", "caption", "ground"):
        assert main(["evaluate", name]) == 1
        assert f"evaluate {name} needs --model DIR" in capsys.readouterr().err

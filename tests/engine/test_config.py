from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from fibervl.engine.config import ConfigError, dump_config, load_config, parse_cli, save_config
from fibervl.engine.optim import OptimConfig
from fibervl.engine.trainer import TrainConfig


@dataclass
class Inner:
    lr: float = 1e-4
    names: list[str] = field(default_factory=list)
    mult: dict[str, float] = field(default_factory=lambda: {"heads.": 5.0})


@dataclass
class Exp:
    name: str
    steps: int = 10
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    maybe: Optional[int] = None
    betas: tuple[float, float] = (0.9, 0.98)
    inner: Inner = field(default_factory=Inner)


def test_yaml_and_typed_overrides(tmp_path: Path) -> None:
    p = tmp_path / "exp.yaml"
    p.write_text("name: x\nsteps: 5\ninner:\n  lr: 1e-3\n  names: [a, b]\n")
    cfg = load_config(Exp, p, ["steps=7", "flag=true", "mode=b", "maybe=null", "inner.lr=2e-4",
                                "inner.mult.cross_modal.=3", "betas=[0.8, 0.9]"])
    assert cfg.name == "x" and cfg.steps == 7 and cfg.flag is True and cfg.mode == "b" and cfg.maybe is None
    assert cfg.inner.lr == pytest.approx(2e-4) and isinstance(cfg.inner.lr, float)  # "2e-4" is a str in YAML 1.1
    assert cfg.inner.names == ["a", "b"]
    # a dotted key below a dict field keeps its dots and starts from the default
    assert cfg.inner.mult == {"heads.": 5.0, "cross_modal.": 3.0}
    assert cfg.betas == (0.8, 0.9)


def test_unknown_key_names_key_and_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.lrr'.*valid keys under 'inner': lr, mult, names"):
        load_config(Exp, None, ["name=x", "inner.lrr=1"])
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nstepz: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'stepz'.*betas, flag, inner, maybe, mode, name, steps"):
        load_config(Exp, p)


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("steps=abc", r"'steps': expected an integer"),
        ("flag=3", r"'flag': expected a boolean"),
        ("mode=c", r"'mode': 'c' is not one of \['a', 'b'\]"),
        ("inner.lr=fast", r"'inner.lr': expected a number"),
        ("betas=[1]", r"'betas': expected 2 items"),
        ("steps", r"must look like dotted.key=value"),
        ("name.sub=1", r"'name' is not a section"),
    ],
)
def test_bad_values(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(Exp, None, ["name=x", override])


def test_missing_required_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing required config key\\(s\\): name"):
        load_config(Exp)
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(Exp, tmp_path / "nope.yaml")


def test_post_init_validation_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="lr must be > 0"):
        load_config(OptimConfig, None, ["lr=-1"])
    with pytest.raises(ConfigError, match="set max_steps or epochs"):
        load_config(TrainConfig, None, [])


def test_round_trip_and_cli(tmp_path: Path) -> None:
    cfg = load_config(TrainConfig, None, ["max_steps=5", "optim.lr_multipliers={heads.: 5.0, '*.i2t*': 2}"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(TrainConfig, tmp_path / "c.yaml")
    assert again == cfg and again.optim.lr_multipliers == {"heads.": 5.0, "*.i2t*": 2.0}
    assert "lr_multipliers" in dump_config(cfg)
    cfg2, flags = parse_cli(TrainConfig, ["--config", str(tmp_path / "c.yaml"), "--resume", "batch_size=3"])
    assert flags == {"config": str(tmp_path / "c.yaml"), "resume": "auto"} and cfg2.batch_size == 3
    _, flags = parse_cli(TrainConfig, ["max_steps=1", "--resume", "runs/x/checkpoints/step_00000004"])
    assert flags["resume"] == "runs/x/checkpoints/step_00000004"
    with pytest.raises(ConfigError, match="unknown option '--lr'"):
        parse_cli(TrainConfig, ["--lr", "3"])


def test_a_section_given_in_part_keeps_the_fields_own_default():
    from dataclasses import dataclass, field

    from fibervl.engine.config import load_config

    @dataclass
    class Inner:
        a: int = 1
        b: str = "class default"

    @dataclass
    class Outer:
        inner: Inner = field(default_factory=lambda: Inner(a=5, b="field default"))

    cfg = load_config(Outer, None, ["inner.a=7"])
    assert cfg.inner == Inner(a=7, b="field default")
    assert load_config(Outer).inner == Inner(a=5, b="field default")


def test_a_commands_aliases_are_overrides_and_listed_by_help(capsys):
    from dataclasses import dataclass, field

    import pytest

    from fibervl.engine.config import ConfigError, parse_cli

    @dataclass
    class Model:
        init: str = ""
        steps: int = 1

    @dataclass
    class Exp:
        model: Model = field(default_factory=Model)

    aliases = {"--init": "model.init", "--steps": "model.steps"}
    cfg, _ = parse_cli(Exp, ["--init", "runs/x", "--steps=7"], aliases)
    assert cfg.model == Model(init="runs/x", steps=7)
    with pytest.raises(ConfigError, match="--init needs a value"):
        parse_cli(Exp, ["--init"], aliases)
    with pytest.raises(ConfigError, match="unknown option '--nope'.*--init"):
        parse_cli(Exp, ["--nope", "1"], aliases)
    with pytest.raises(SystemExit):
        parse_cli(Exp, ["-h"], aliases)
    assert "--init V" in capsys.readouterr().out


def test_epochs_given_over_a_recipe_default_of_steps_trains_epochs(tmp_path: Path):
    """A recipe's section defaults to ``max_steps``; a config or command that gives ``epochs``
    alone means epochs (not the default's steps, which would win over it); both given: steps."""
    from dataclasses import dataclass, field

    @dataclass
    class Recipe:
        train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=100))

    assert load_config(Recipe, None, ["train.epochs=8"]).train.max_steps is None
    assert load_config(Recipe, None, ["train.epochs=8"]).train.epochs == 8
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  epochs: 8\n  batch_size: 16\n", encoding="utf-8")
    from_file = load_config(Recipe, config)
    assert (from_file.train.max_steps, from_file.train.epochs, from_file.train.batch_size) == (None, 8, 16)
    both = load_config(Recipe, config, ["train.max_steps=5"]).train
    assert (both.max_steps, both.epochs) == (5, 8)
    assert load_config(Recipe, None, ["train.batch_size=4"]).train.max_steps == 100

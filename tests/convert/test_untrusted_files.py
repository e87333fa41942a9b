"""Untrusted files never execute code: a pickle crafted to run code when loaded is refused, with
an error naming the file, by every loader (trainer state, model directories) and by every
converter (through ``fibervl convert``), and the code never runs."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from fibervl.cli import main as cli_main
from fibervl.engine import checkpoint as ckpt
from fibervl.engine.trainer import Trainer, TrainConfig
from fibervl.modeling.factory import create_model
from fibervl.modeling.fiber import FiberModel
from fibervl.errors import CheckpointError
from fibervl.testing.configs import micro_config


class _RunsCode:
    """Unpickling this calls ``exec``, which writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "code-ran"


def torch_bomb(path: Path, marker: Path, wrap: str | None = None) -> Path:
    """A torch (zip) file whose state dict holds a code-running object (under ``wrap``, if given)."""
    state = {"weight": torch.zeros(2), "payload": _RunsCode(marker)}
    torch.save({wrap: state} if wrap else state, path)
    return path


def pickle_bomb(path: Path, marker: Path) -> Path:
    """A plain pickle, the legacy torch format."""
    with open(path, "wb") as f:
        pickle.dump({"weight": torch.zeros(2), "payload": _RunsCode(marker)}, f)
    return path


def test_the_bombs_are_live(tmp_path: Path, marker: Path) -> None:
    """Loaded without weights_only the files do run code: the tests below would notice if it ran."""
    torch.load(torch_bomb(tmp_path / "x.pt", marker), weights_only=False)
    assert marker.read_text() == "code ran"
    marker.unlink()
    with open(pickle_bomb(tmp_path / "x.pkl", marker), "rb") as f:
        pickle.load(f)
    assert marker.read_text() == "code ran"


# what the refusal says: a torch file naming a code global, or a pickle the safe unpickler cannot read
REFUSED = {torch_bomb: "refused: loading it would call or import exec, i.e. run code, so it was not loaded",
           pickle_bomb: "not readable as plain tensors with weights_only=True (Unsupported operand "}


def _rehash(ck: Path) -> None:
    """Update meta.json to the files as they are: the loaders themselves must refuse."""
    meta = json.loads((ck / "meta.json").read_text())
    for name, info in meta["files"].items():
        info["bytes"] = (ck / name).stat().st_size
        info["sha256"] = ckpt._sha256(ck / name)
    (ck / "meta.json").write_text(json.dumps(meta))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("make", [torch_bomb, pickle_bomb])
def test_trainer_resume_refuses_a_code_running_state_file(tmp_path: Path, marker: Path, make) -> None:
    def cfg(**kw) -> TrainConfig:
        return TrainConfig(run_dir=str(tmp_path / "run"), max_steps=2, batch_size=2, ckpt_every=None,
                           progress_bar=False, **kw)

    data = [{"x": torch.randn(3), "y": torch.randn(1)} for _ in range(4)]
    task = type("Task", (), {"training_step": lambda self, m, b: {"loss": (m(b["x"]) - b["y"]).pow(2).mean()}})()
    Trainer(cfg(), torch.nn.Linear(3, 1), task, data).fit()
    ck = tmp_path / "run" / "checkpoints" / "step_00000002"
    make(ck / "state.pt", marker)
    _rehash(ck)
    with pytest.raises(ckpt.CheckpointError) as err:
        Trainer(cfg(resume="auto"), torch.nn.Linear(3, 1), task, data).fit()
    assert str(err.value).startswith(f"cannot load checkpoint state file {ck / 'state.pt'}: ")
    assert REFUSED[make] in str(err.value) and "weights_only=False" not in str(err.value)
    assert not marker.exists()


def test_checkpoint_weight_files_are_never_unpickled(tmp_path: Path, marker: Path) -> None:
    model = torch.nn.Linear(2, 2)
    ck = ckpt.save_checkpoint(tmp_path, 1, model, {"step": 1}, {"ema": model.state_dict()})
    for name in ("model", "ema"):
        pickle_bomb(ck / f"{name}.safetensors", marker)
    _rehash(ck)
    with pytest.raises(ckpt.CheckpointError, match=f"cannot load checkpoint weights file {ck / 'model.safetensors'}"):
        ckpt.load_model_weights(ck, model)
    with pytest.raises(ckpt.CheckpointError, match=f"cannot load checkpoint weights file {ck / 'ema.safetensors'}"):
        ckpt.load_weights_file(ck, "ema")
    assert not marker.exists()


@pytest.fixture
def micro_dir(tmp_path: Path) -> Path:
    out = tmp_path / "micro"
    FiberModel(micro_config()).save_pretrained(out)
    return out


@pytest.mark.parametrize("load", [FiberModel.from_pretrained, create_model])
def test_model_directories_are_never_unpickled(micro_dir: Path, marker: Path, load) -> None:
    weights = micro_dir / "model.safetensors"
    pickle_bomb(weights, marker)
    with pytest.raises(CheckpointError, match=f"{weights}: cannot read safetensors weights"):
        load(micro_dir)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind, src_name, make, wrap", [
    ("official-coarse", "fiber.ckpt", torch_bomb, "state_dict"),
    ("official-coarse", "fiber-legacy.ckpt", pickle_bomb, None),
    ("official-fine", "fiber_fine.pth", torch_bomb, "model"),
    ("roberta", "pytorch_model.bin", torch_bomb, None),
    ("roberta", "hf_dir/pytorch_model.bin", torch_bomb, None),  # given as the directory
    ("roberta", "model.safetensors", pickle_bomb, None),  # a pickle dressed as safetensors
    ("swin", "swin_base.pth", torch_bomb, "model"),
])
def test_every_converter_refuses_code(tmp_path: Path, marker: Path, micro_dir: Path, capsys, kind, src_name, make,
                                      wrap) -> None:
    src = tmp_path / src_name
    src.parent.mkdir(parents=True, exist_ok=True)
    torch_bomb(src, marker, wrap) if make is torch_bomb else make(src, marker)
    arg = src.parent if src_name.startswith("hf_dir/") else src
    extra = ["--init", str(micro_dir)] if kind in ("roberta", "swin") else []
    assert cli_main(["convert", kind, str(arg), str(tmp_path / "out"), *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fibervl convert: error: ") and str(src) in err, err
    if src.suffix == ".safetensors":
        assert "cannot read safetensors weights" in err
    else:
        assert REFUSED[make] in err and "weights_only=False" not in err
    assert not marker.exists() and not (tmp_path / "out").exists()

"""The family registry: presets of every family, saved directories find their class."""

import json

import pytest

from fibervl.errors import ConfigError
from fibervl.modeling.factory import create_model, list_presets, preset_config, read_model_config
from fibervl.modeling.fiber import FiberModel
from fibervl.testing.configs import micro_config


def test_fiber_presets_are_registered():
    presets = list_presets()
    assert presets["fiber-tiny"] == "fiber" and presets["fiber-base"] == "fiber"
    assert preset_config("fiber-tiny").name == "fiber-tiny"


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="fiber-tiny"):
        preset_config("no-such-model")


def test_saved_fiber_directory_loads_through_the_registry(tmp_path):
    model = FiberModel(micro_config())
    model.save_pretrained(tmp_path)
    assert read_model_config(tmp_path).family == "fiber"
    loaded = create_model(tmp_path)
    assert type(loaded) is FiberModel
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert a.equal(b), k


def test_unknown_family_in_config_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"family": "nonesuch"}))
    with pytest.raises(ConfigError, match="nonesuch"):
        create_model(tmp_path)

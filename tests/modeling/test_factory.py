"""``create_model``: every kind of source gives the model it names, with the weights it should have."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from fibervl.config import DetectionConfig, TextConfig
from fibervl.errors import CheckpointError, ConfigError
from fibervl.modeling.albef import AlbefModel
from fibervl.modeling.factory import create_model, family_of, list_presets, preset_config, read_model_config
from fibervl.modeling.fiber import FiberModel
from fibervl.modeling.protocol import ModelConfig, VisionLanguageModel
from fibervl.modeling.vlmo import VlmoConfig, VlmoModel, VlmoVisionConfig
from fibervl.testing.configs import albef_micro_config, micro_config


def micro_vlmo() -> VlmoConfig:
    text = TextConfig(vocab_size=100, hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64,
                      max_position_embeddings=40, mask_token_id=99, dropout=0.0, max_text_len=16)
    return VlmoConfig(name="micro-vlmo", vision=VlmoVisionConfig(image_size=32, patch_size=8), text=text, hidden_size=32,
                      num_layers=4, num_heads=2, intermediate_size=64, vl_layers=2, drop_path_rate=0.0, vqa_num_answers=7)


FAMILIES = {"fiber": (micro_config, FiberModel), "albef": (albef_micro_config, AlbefModel), "vlmo": (micro_vlmo, VlmoModel)}


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def seeded(model_cls, config, seed: int):
    torch.manual_seed(seed)
    return model_cls(config)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_config_gives_the_model_its_class_builds_from_the_seed(family):
    """A fresh model is the family's class built right after ``torch.manual_seed(seed)``, and
    the process's random stream is left as it was."""
    make_config, model_cls = FAMILIES[family]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    model = create_model(make_config(), seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    assert type(model) is model_cls and model.config.family == family
    assert isinstance(model, VisionLanguageModel) and isinstance(model.config, ModelConfig)
    assert same_weights(model, seeded(model_cls, make_config(), 5))
    assert not same_weights(model, create_model(make_config(), seed=6))


def test_seed_none_draws_from_the_process_stream():
    torch.manual_seed(9)
    model = create_model(micro_config(), seed=None)
    assert same_weights(model, seeded(FiberModel, micro_config(), 9))


def test_a_preset_name_of_any_family():
    presets = list_presets()
    assert {presets["fiber-tiny"], presets["albef-tiny"], presets["vlmo-tiny"]} == {"fiber", "albef", "vlmo"}
    model = create_model("albef-tiny", seed=1)
    assert type(model) is AlbefModel and model.config == preset_config("albef-tiny")
    assert same_weights(model, seeded(AlbefModel, preset_config("albef-tiny"), 1))


def test_an_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown preset 'fiber-huge'; known presets: .*'albef-tiny'.*'fiber-tiny'"):
        create_model("fiber-huge")
    with pytest.raises(FileNotFoundError, match="nowhere/model is neither a model directory"):
        create_model("nowhere/model")


def test_tokenizer_heads_and_config_changes_shape_a_fresh_model():
    tokenizer = dataclasses.replace(micro_config().text, vocab_size=57, mask_token_id=56, pad_token_id=1)
    model = create_model(micro_config(), tokenizer=tokenizer, heads=("itc", "itm"), new_heads=("vqa",),
                         config_changes={"vqa_num_answers": 4})
    cfg = model.config
    assert (cfg.text.vocab_size, cfg.text.mask_token_id, cfg.heads, cfg.vqa_num_answers) == (57, 56, ("itc", "itm", "vqa"), 4)
    assert model.text.embeddings.word_embeddings.num_embeddings == 57 and model.heads.vqa[-1].out_features == 4


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_saved_directory_and_a_run_directory_round_trip(family, tmp_path):
    make_config, model_cls = FAMILIES[family]
    model = create_model(make_config(), seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not a fresh initialisation any more
    model.save_pretrained(tmp_path / "run" / "model")
    assert read_model_config(tmp_path / "run").family == family
    for source in (tmp_path / "run" / "model", tmp_path / "run", str(tmp_path / "run")):
        loaded = create_model(source)
        assert type(loaded) is model_cls and loaded.config == model.config and same_weights(loaded, model)
    assert same_weights(model_cls.from_pretrained(tmp_path / "run"), model)


def test_a_config_json_without_family_is_fiber(tmp_path):
    """Directories saved before configs named their family still load, as FIBER models."""
    model = FiberModel(micro_config())
    model.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data.pop("family") == "fiber"
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert read_model_config(tmp_path).family == "fiber"
    assert same_weights(create_model(tmp_path), model)


def test_the_family_is_checked(tmp_path):
    AlbefModel(albef_micro_config()).save_pretrained(tmp_path / "albef")
    with pytest.raises(ConfigError, match="albef.* is a albef model, not a fiber model"):
        FiberModel.from_pretrained(tmp_path / "albef")
    with pytest.raises(ConfigError, match="a FiberConfig has family 'fiber', got 'vlmo'"):
        micro_config().replace(family="vlmo")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"family": "nonesuch"}))
    with pytest.raises(ConfigError, match=r"odd/config\.json: unknown model family 'nonesuch'; known: \['fiber', 'albef', 'vlmo'\]"):
        create_model(tmp_path / "odd")
    assert family_of(micro_vlmo()).model_cls is VlmoModel


def test_a_recipe_names_its_family_through_the_model_spec(tmp_path):
    """A pre-training recipe given another family's model (``pretrain albef`` with a FIBER
    directory) stops at the factory's family check, before a weight is built."""
    from fibervl.experiment import ModelSpec

    FiberModel(micro_config()).save_pretrained(tmp_path / "fiber")
    with pytest.raises(ConfigError, match="is a fiber model, not a albef model"):
        ModelSpec(preset=str(tmp_path / "fiber")).build(None, family="albef")
    with pytest.raises(ConfigError, match="is a fiber model, not a vlmo model"):
        ModelSpec(init=str(tmp_path / "fiber")).build(None, family="vlmo")


def test_a_missing_weight_names_the_key_and_the_file(tmp_path):
    model = FiberModel(micro_config())
    state = {k: v for k, v in model.state_dict().items() if k != "heads.itm.weight"}
    model.save_pretrained(tmp_path)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match the model: missing keys \(1\): heads\.itm\.weight"):
        create_model(tmp_path)


def test_a_tokenizer_that_does_not_fit_a_saved_model_is_an_error(tmp_path):
    FiberModel(micro_config()).save_pretrained(tmp_path)
    other = dataclasses.replace(micro_config().text, vocab_size=57, mask_token_id=56)
    with pytest.raises(ConfigError, match=rf"the tokenizer \(vocab 57, mask 56, pad 1\) does not fit the model in {tmp_path}"):
        create_model(tmp_path, tokenizer=other)
    with pytest.raises(ConfigError, match="is a saved model: it keeps its own heads"):
        create_model(tmp_path, heads=("itc",))


def test_task_init_adds_a_fresh_head_and_loads_everything_else(tmp_path):
    """A saved model with a new (re-initialised) VQA head of another size: every other weight
    is the saved one, the head is what a fresh model of the changed config drawn from the same
    seed has; a head whose shape changes without being new is an error naming it."""
    base = create_model(micro_config(), seed=0)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(1.0)
    base.save_pretrained(tmp_path / "base")
    model, report = create_model(tmp_path / "base", new_heads=("vqa",), config_changes={"vqa_num_answers": 3},
                                 seed=4, with_report=True)
    assert model.heads.vqa[-1].out_features == 3
    assert report.new and all(k.startswith("heads.vqa.") for k in report.new)
    fresh = create_model(micro_config().replace(vqa_num_answers=3), seed=4).state_dict()
    saved = base.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh[k] if k in report.new else saved[k]), k
    with pytest.raises(CheckpointError, match=r"base/model\.safetensors does not fit the model.*heads\.vqa\.3\.weight: "
                                              r"file has \(7, 48\), model expects \(3, 48\)"):
        create_model(tmp_path / "base", config_changes={"vqa_num_answers": 3})


def test_compatible_init_across_architectures(tmp_path):
    """A coarse model's weights into a fine-grained (detector) config: shared names are copied,
    the rest is the fresh model drawn from the seed, and the report names both sides."""
    coarse = create_model(micro_config(), seed=0)
    with torch.no_grad():
        for p in coarse.parameters():
            p.add_(1.0)
    coarse.save_pretrained(tmp_path / "coarse" / "model")
    micro = micro_config()
    fine_cfg = micro.replace(vision=dataclasses.replace(micro.vision, feature_norms=(1, 2, 3)), heads=(),
                             detection=DetectionConfig(channels=16, num_blocks=1, num_groups=4, max_query_len=16))
    model, report = create_model(fine_cfg, init=tmp_path / "coarse", seed=2, with_report=True)
    fresh = create_model(fine_cfg, seed=2).state_dict()
    saved = coarse.state_dict()
    assert report.init == str(tmp_path / "coarse")
    assert report.new and all(k.startswith(("detector.", "vision.feature_norms.")) for k in report.new)
    assert report.unused and all(k.startswith(("heads.", "cross_modal.", "temperature")) for k in report.unused)
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh[k] if k in report.new else saved[k]), k

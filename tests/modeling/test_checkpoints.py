"""Saving, loading and converting weights: exact round trips, and clear errors for bad files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from fibervl.cli import main as cli_main
from fibervl.config import FiberConfig, get_preset
from fibervl.convert.common import ConversionError
from fibervl.convert.official_coarse import convert_official_coarse_state
from fibervl.convert.official_vqa import check_vqa_files, official_answer_list
from fibervl.convert.unimodal import load_roberta, load_swin
from fibervl.modeling.fiber import FiberModel
from fibervl.errors import CheckpointError, ConfigError
from fibervl.modeling.pretrained import loaded_once
from fibervl.modeling.swin import resize_relative_position_table
from fibervl.testing.configs import micro_config


def test_save_load_round_trip_is_bit_exact(tmp_path, micro, batch):
    model = FiberModel(micro)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = FiberModel.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    images, ids, mask = batch
    with torch.no_grad():
        assert torch.equal(model.eval().fuse(images, ids, mask).cls_feats, loaded.eval().fuse(images, ids, mask).cls_feats)


def test_loaded_once_reuses_a_model_until_its_weights_change(tmp_path, micro):
    """The report reads each stage's model once for many pictures; a re-saved directory is read
    again, and outside the block every call loads afresh."""
    model = FiberModel(micro)
    model.save_pretrained(tmp_path / "m")
    with loaded_once():
        first = FiberModel.from_pretrained(tmp_path / "m")
        assert FiberModel.from_pretrained(tmp_path / "m") is first
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
        model.save_pretrained(tmp_path / "m")
        second = FiberModel.from_pretrained(tmp_path / "m")
        assert second is not first
        assert torch.equal(next(second.parameters()), next(model.parameters()))
    assert FiberModel.from_pretrained(tmp_path / "m") is not FiberModel.from_pretrained(tmp_path / "m")


def _saved(tmp_path, micro):
    model = FiberModel(micro)
    model.save_pretrained(tmp_path / "m")
    return model.state_dict(), tmp_path / "m"


def test_wrong_shape_names_the_key(tmp_path, micro):
    state, directory = _saved(tmp_path, micro)
    state = dict(state)
    state["heads.vqa.3.weight"] = torch.zeros(3, 48)
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"heads\.vqa\.3\.weight: file has \(3, 48\), model expects \(7, 48\)"):
        FiberModel.from_pretrained(directory)


def test_unknown_and_missing_keys_are_named(tmp_path, micro):
    state, directory = _saved(tmp_path, micro)
    state = dict(state)
    state["vision.extra.weight"] = torch.zeros(1)
    del state["text.layers.0.output.bias"]
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        FiberModel.from_pretrained(directory)
    assert "vision.extra.weight" in str(err.value) and "text.layers.0.output.bias" in str(err.value)


def test_truncated_file_names_the_file(tmp_path, micro):
    _, directory = _saved(tmp_path, micro)
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated or corrupt"):
        FiberModel.from_pretrained(directory)


def test_missing_directory_and_bad_config(tmp_path, micro):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        FiberModel.from_pretrained(tmp_path / "nowhere")
    _, directory = _saved(tmp_path, micro)
    data = json.loads((directory / "config.json").read_text())
    data["vision"]["windw_size"] = 3
    (directory / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"config\.json: config\.vision: unknown key\(s\) \['windw_size'\]"):
        FiberModel.from_pretrained(directory)


def test_config_round_trip_and_validation(tmp_path):
    for name in ("fiber-base", "fiber-tiny", "fiber-base-fine"):
        cfg = get_preset(name)
        cfg.save(tmp_path / "c.json")
        assert FiberConfig.load(tmp_path / "c.json") == cfg
    with pytest.raises(ConfigError, match="unknown preset 'fiber-huge'"):
        get_preset("fiber-huge")
    with pytest.raises(ConfigError, match="fusion.num_layers=30"):
        FiberConfig.from_dict({"fusion": {"num_layers": 30}})
    with pytest.raises(ConfigError, match="unknown heads"):
        FiberConfig.from_dict({"heads": ["itm", "retrieval"]})


def test_detection_class_scores_follow_the_config():
    """The tiny fine-grained preset scores a prompt's classes as exclusive; a config written
    before the key existed (and the official presets) keep the official independent scores."""
    tiny = get_preset("fiber-tiny-fine")
    assert tiny.detection.class_scores == "exclusive"
    assert FiberModel(tiny).detector.postprocessor.class_scores == "exclusive"
    assert get_preset("fiber-base-fine").detection.class_scores == "independent"
    old = tiny.to_dict()
    del old["detection"]["class_scores"]
    assert FiberModel(FiberConfig.from_dict(old)).detector.postprocessor.class_scores == "independent"
    old["detection"]["class_scores"] = "softmax"
    with pytest.raises(ConfigError, match="detection.class_scores must be one of"):
        FiberConfig.from_dict(old)


def test_relative_position_table_resize():
    table = torch.randn(23 * 23, 4)
    assert resize_relative_position_table(table, 12) is table
    resized = resize_relative_position_table(table, 18)
    assert resized.shape == (35 * 35, 4)
    # A constant table stays constant under bicubic resizing.
    torch.testing.assert_close(resize_relative_position_table(torch.full((9, 2), 0.3), 4), torch.full((49, 2), 0.3))


# ---- official converter strictness (on the micro model's official-layout names) -------------

def official_names(model: FiberModel) -> dict[str, torch.Tensor]:
    """The micro model's weights under the official coarse key names (a hand-written inverse map)."""
    out = {}
    for key, value in model.state_dict().items():
        k = key
        for ours, theirs in [
            ("vision.stages.", "vit_model.layers."), ("vision.patch_embed.", "vit_model.patch_embed."),
            ("vision.norm.", "vit_model.norm."), (".i2t.text_kv.", ".attn.qkv_text_i2t."), (".i2t.query.", ".attn.qkv_i2t."),
            (".i2t.out.", ".attn.proj_i2t."), (".i2t.query_norm.", ".attn.norm_i2t_i."), (".i2t.alpha", ".attn.alpha_i2t"),
            ("text.embeddings.norm.", "text_transformer.embeddings.LayerNorm."), ("text.embeddings.", "text_transformer.embeddings."),
            ("text.layers.", "text_transformer.encoder.layer."), (".attention.query.", ".attention.self.query."),
            (".attention.key.", ".attention.self.key."), (".attention.value.", ".attention.self.value."),
            (".attention.out.", ".attention.output.dense."), (".attention_norm.", ".attention.output.LayerNorm."),
            (".intermediate.", ".intermediate.dense."), (".output_norm.", ".output.LayerNorm."), (".output.weight", ".output.dense.weight"),
            (".output.bias", ".output.dense.bias"), (".t2i.alpha", ".alpha_t2i"), (".t2i.query.", ".crossattention_t2i.self.query."),
            (".t2i.key.", ".crossattention_t2i.self.key."), (".t2i.value.", ".crossattention_t2i.self.value."),
            (".t2i.out.", ".crossattention_t2i.output.dense."),
            ("cross_modal.itc_text_transform.", "cross_modal_text_transform_itc."),
            ("cross_modal.itc_image_transform.", "cross_modal_image_transform_itc."),
            ("cross_modal.itc_text_pooler.", "cross_modal_text_pooler_itc."),
            ("cross_modal.itc_image_pooler.", "cross_modal_image_pooler_itc."),
            ("cross_modal.text_transform.", "cross_modal_text_transform."),
            ("cross_modal.image_transform.", "cross_modal_image_transform."),
            ("cross_modal.text_pooler.", "cross_modal_text_pooler."), ("cross_modal.image_pooler.", "cross_modal_image_pooler."),
            ("heads.mlm.dense.", "mlm_score.transform.dense."), ("heads.mlm.norm.", "mlm_score.transform.LayerNorm."),
            ("heads.mlm.decoder.", "mlm_score.decoder."), ("heads.mlm.bias", "mlm_score.bias"), ("heads.itm.", "itm_score.fc."),
            ("heads.vqa.", "vqa_classifier."), ("heads.nlvr2.", "nlvr2_classifier."), ("temperature", "temp"),
        ]:
            k = k.replace(ours, theirs)
        out[k] = value.clone()
    out["text_transformer.pooler.dense.weight"] = torch.zeros(32, 32)
    out["queue_ptr"] = torch.zeros(1, dtype=torch.long)
    out["rank_output.weight"] = out["itm_score.fc.weight"][1:].clone()
    out["rank_output.bias"] = out["itm_score.fc.bias"][1:].clone()
    return out


@pytest.fixture
def official_micro():
    cfg = micro_config().replace(heads=("itc", "itm", "mlm", "vqa", "nlvr2"))
    cfg.vision.window_size = None  # the official rule: image_size / 32
    model = FiberModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model, official_names(model)


def test_official_converter_round_trip(official_micro):
    model, state = official_micro
    converted, dropped = convert_official_coarse_state(state, image_size=64, text_head_dim=16)
    assert set(dropped) == {"text_transformer.pooler.dense.weight", "queue_ptr", "rank_output.weight", "rank_output.bias"}
    for key, value in model.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key


def test_create_model_reaches_official_checkpoints_through_their_converter(official_micro, tmp_path):
    """``create_model("official-coarse:PATH")`` converts the file as ``fibervl convert`` does,
    reports the keys the converter dropped, and adds a task head like any saved model."""
    from fibervl.modeling.factory import create_model

    model, state = official_micro
    torch.save({"state_dict": state, "epoch": 0}, tmp_path / "official.ckpt")
    source = f"official-coarse:{tmp_path / 'official.ckpt'}"
    options = {"image_size": 64, "text_head_dim": 16}
    converted, report = create_model(source, convert_options=options, with_report=True)
    assert report.dropped.keys() == {"text_transformer.pooler.dense.weight", "queue_ptr", "rank_output.weight",
                                     "rank_output.bias"} and report.new == []
    for key, value in model.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key
    vqa, report = create_model(source, convert_options=options, new_heads=("vqa",), config_changes={"vqa_num_answers": 3},
                               with_report=True)
    assert report.new and all(k.startswith("heads.vqa.") for k in report.new) and vqa.heads.vqa[-1].out_features == 3
    assert torch.equal(vqa.state_dict()["heads.itm.weight"], model.state_dict()["heads.itm.weight"])
    with pytest.raises(ConfigError, match="official checkpoint.*init="):
        create_model(source, convert_options=options, init=tmp_path)


def test_official_converter_rejects_unknown_and_missing_keys(official_micro):
    _, state = official_micro
    bad = dict(state, **{"vit_model.layers.0.blocks.0.attn.mystery": torch.zeros(1)})
    with pytest.raises(ConversionError, match="unknown source key.*vit_model.layers.0.blocks.0.attn.mystery"):
        convert_official_coarse_state(bad, image_size=64, text_head_dim=16)
    bad = dict(state)
    del bad["text_transformer.encoder.layer.2.crossattention_t2i.self.key.weight"]
    with pytest.raises(ConversionError, match=r"missing keys.*text\.layers\.2\.t2i\.key\.weight"):
        convert_official_coarse_state(bad, image_size=64, text_head_dim=16)
    bad = dict(state, **{"rank_output.bias": torch.ones(1)})
    with pytest.raises(ConversionError, match="untied"):
        convert_official_coarse_state(bad, image_size=64, text_head_dim=16)


def test_official_converter_resizes_windows(official_micro):
    model, state = official_micro
    converted, _ = convert_official_coarse_state(state, image_size=128, text_head_dim=16)  # window 2 -> 4
    table = converted.state_dict()["vision.stages.0.blocks.0.attn.relative_position_bias_table"]
    assert table.shape == (49, 1)


def test_convert_cli_reads_lightning_ckpt_with_weights_only(tmp_path, official_micro):
    model, state = official_micro
    torch.save({"state_dict": state, "epoch": 3, "hyper_parameters": {"lr": 1e-4}}, tmp_path / "x.ckpt")
    assert cli_main(["convert", "official-coarse", str(tmp_path / "x.ckpt"), str(tmp_path / "out"), "--image-size", "64",
                    "--text-head-dim", "16"]) == 0
    loaded = FiberModel.from_pretrained(tmp_path / "out")
    assert torch.equal(loaded.state_dict()["heads.itm.weight"], model.state_dict()["heads.itm.weight"])
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    assert cli_main(["convert", "official-coarse", str(tmp_path / "bad.ckpt"), str(tmp_path / "o2")]) == 1


def _vqa_annotations(path, answers: list[str]) -> str:
    records = [{"question_id": k, "image_id": 1, "multiple_choice_answer": a, "answers": []} for k, a in enumerate(answers)]
    path.write_text(json.dumps({"data_subtype": path.stem, "annotations": records}), encoding="utf-8")
    return str(path)


def test_official_vqa_checkpoint_converts_to_a_model_predict_accepts(tmp_path):
    """The answer list is rebuilt in the official label2ans order (first occurrence over train
    then val, normalised, >= 9 times), not by frequency, and written with the tokenizer."""
    import dataclasses

    from PIL import Image

    from fibervl.data.tokenizer import train_bytelevel_bpe

    tokenizer = train_bytelevel_bpe(["what colour is the star", "how many shapes are there"] * 8, vocab_size=300)
    tokenizer.save(tmp_path / "roberta")
    cfg = micro_config().replace(heads=("itc", "itm", "mlm", "vqa"), vqa_num_answers=3)
    cfg = cfg.replace(text=dataclasses.replace(
        cfg.text, vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.mask_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    cfg.vision.window_size = None
    torch.manual_seed(0)
    state = official_names(FiberModel(cfg))
    state["vqa_classifier.3.bias"] = torch.tensor([0.0, 50.0, 0.0])  # row 1 always wins
    torch.save({"state_dict": state}, tmp_path / "vqa.ckpt")
    # counts after normalisation: yes 9, 2 9 ("Two" + "2"), red 10, blue 8 (dropped);
    # first occurrence: yes, 2, red (by frequency it would be red, 2, yes)
    train = _vqa_annotations(tmp_path / "train2014.json", ["yes."] * 9 + ["Two"] * 5 + ["red"] * 4)
    val = _vqa_annotations(tmp_path / "val2014.json", ["2"] * 4 + ["red"] * 6 + ["blue"] * 8)
    out = tmp_path / "converted"
    args = ["convert", "official-coarse", str(tmp_path / "vqa.ckpt"), str(out), "--image-size", "64", "--text-head-dim", "16"]
    assert cli_main(args + ["--vqa-answers", train, val, "--tokenizer", str(tmp_path / "roberta")]) == 0
    assert json.loads((out / "answers.json").read_text()) == ["yes", "2", "red"]
    assert (out / "tokenizer" / "tokenizer.json").is_file()

    Image.new("RGB", (80, 60), "red").save(tmp_path / "x.png")
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli_main(["predict", "vqa", "--model", str(out), "--image", str(tmp_path / "x.png"),
                         "--question", "how many shapes are there"]) == 0
    assert json.loads(printed.getvalue().strip().splitlines()[-1])["answer"] == "2"

    # A saved list is taken as it is; lists or tokenizers that do not fit are refused, naming why.
    (tmp_path / "label2ans.json").write_text(json.dumps({"red": 2, "yes": 0, "2": 1}))
    assert cli_main(args[:3] + [str(tmp_path / "o2")] + args[4:] + ["--vqa-answers", str(tmp_path / "label2ans.json")]) == 0
    assert json.loads((tmp_path / "o2" / "answers.json").read_text()) == ["yes", "2", "red"]
    (tmp_path / "four.json").write_text(json.dumps(["a", "b", "c", "d"]))
    with pytest.raises(ConversionError, match="4 answers.*3 rows"):
        check_vqa_files(FiberModel(cfg), ["a", "b", "c", "d"])
    assert cli_main(args[:3] + [str(tmp_path / "o3")] + args[4:] + ["--vqa-answers", str(tmp_path / "four.json")]) == 1
    assert not (tmp_path / "o3").exists()
    other = train_bytelevel_bpe(["a different corpus of words entirely"] * 8, vocab_size=270)
    other.save(tmp_path / "other")
    with pytest.raises(ConversionError, match="not the model's tokenizer"):
        check_vqa_files(FiberModel(cfg), None, tmp_path / "other")
    (tmp_path / "bad.json").write_text(json.dumps({"annotations": [{"answers": []}]}))
    with pytest.raises(ConversionError, match="bad.json: annotation 0 has no 'multiple_choice_answer'"):
        official_answer_list([tmp_path / "bad.json"])


# ---- uni-modal initialisation -----------------------------------------------------------------

def hf_roberta_names(model: FiberModel) -> dict[str, torch.Tensor]:
    """A Hugging Face RobertaForMaskedLM-style state dict for the micro text encoder."""
    out = {}
    for key, value in model.state_dict().items():
        if not key.startswith("text.") or ".t2i." in key:
            continue
        k = key.replace("text.", "roberta.", 1).replace("roberta.layers.", "roberta.encoder.layer.")
        for ours, theirs in [("embeddings.norm.", "embeddings.LayerNorm."), (".attention.query.", ".attention.self.query."),
                             (".attention.key.", ".attention.self.key."), (".attention.value.", ".attention.self.value."),
                             (".attention.out.", ".attention.output.dense."), (".attention_norm.", ".attention.output.LayerNorm."),
                             (".intermediate.", ".intermediate.dense."), (".output_norm.", ".output.LayerNorm."),
                             (".output.weight", ".output.dense.weight"), (".output.bias", ".output.dense.bias")]:
            k = k.replace(ours, theirs)
        out[k] = value.clone() + 0.5
    out["roberta.embeddings.position_ids"] = torch.arange(40)[None]
    out["lm_head.dense.weight"] = torch.zeros(32, 32)
    return out


def test_load_roberta_fills_every_text_weight(tmp_path, micro):
    source = hf_roberta_names(FiberModel(micro))
    save_file({k: v.contiguous() for k, v in source.items()}, str(tmp_path / "model.safetensors"))
    model = FiberModel(micro)
    left, dropped = load_roberta(model, tmp_path)
    assert left and all(".t2i." in k for k in left)
    assert "lm_head.dense.weight" in dropped
    state = model.state_dict()
    assert torch.equal(state["text.layers.1.attention.query.weight"], source["roberta.encoder.layer.1.attention.self.query.weight"])
    assert torch.equal(state["text.embeddings.norm.bias"], source["roberta.embeddings.LayerNorm.bias"])
    del source["roberta.encoder.layer.2.output.dense.bias"]
    torch.save(source, tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ConversionError, match=r"missing \['text\.layers\.2\.output\.bias'\]"):
        load_roberta(FiberModel(micro), tmp_path)


def test_load_swin_fills_every_vision_weight(tmp_path, micro):
    source = {}
    for key, value in FiberModel(micro).state_dict().items():
        if key.startswith("vision.") and ".i2t." not in key:
            source[key.replace("vision.", "").replace("stages.", "layers.")] = value.clone() + 1
    source["head.weight"] = torch.zeros(10, 128)
    source["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(4, 4, dtype=torch.long)
    torch.save({"model": source}, tmp_path / "swin.pth")
    model = FiberModel(micro)
    left, dropped = load_swin(model, tmp_path / "swin.pth")
    assert all(".i2t." in k for k in left) and "head.weight" in dropped
    assert torch.equal(model.state_dict()["vision.stages.2.blocks.1.mlp.fc2.weight"], source["layers.2.blocks.1.mlp.fc2.weight"])

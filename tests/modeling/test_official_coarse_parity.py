"""Parity with the official FIBER coarse model (golden fixture A), after a real conversion.

The official weights are rebuilt from the fixture's weight rule, written as a Lightning-style
``.ckpt``, converted with ``fibervl convert official-coarse``, reloaded with
``FiberModel.from_pretrained`` and run on the fixture inputs. Every stored output must match
within 1e-4 (absolute, fp32). ``FIBERVL_OFFICIAL_FIXTURES`` picks the fixture directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fibervl.cli import main as cli_main
from fibervl.modeling.fiber import FiberModel
from fibervl.testing.official_fixtures import fixture_dir, load_fixture, official_state_dict

ATOL = 1e-4


@pytest.fixture(scope="module")
def coarse(tmp_path_factory):
    directory = fixture_dir()  # raises (fails the test) if the directory is missing
    fx, meta = load_fixture("coarse", directory)
    state = official_state_dict("coarse", directory, alpha_base=float(meta["alpha_base"]))
    work = tmp_path_factory.mktemp("official")
    torch.save({"state_dict": state, "epoch": 0}, work / "official.ckpt")
    del state
    size = fx["input.image"].shape[-1]
    assert cli_main(["convert", "official-coarse", str(work / "official.ckpt"), str(work / "converted"),
                     "--image-size", str(size)]) == 0
    (work / "official.ckpt").unlink()
    model = FiberModel.from_pretrained(work / "converted").eval()
    return model, fx


def gather(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [B, T, ...] at positions [B, K] -> [B, K, ...]."""
    return torch.stack([x[i, positions[i]] for i in range(x.shape[0])])


def check(fx, name, value):
    ref = fx[name]
    assert value.shape == ref.shape, f"{name}: shape {tuple(value.shape)} != {tuple(ref.shape)}"
    diff = (value - ref).abs().max().item()
    assert diff <= ATOL, f"{name}: max |diff| {diff:.3e} > {ATOL}"


@torch.no_grad()
def test_fused_outputs_and_heads(coarse):
    model, fx = coarse
    captured = {}
    hooks = [model.text.layers[i].register_forward_hook(lambda m, a, out, i=i: captured.__setitem__(i, out))
             for i in (5, 9, model.config.text.num_layers - 1)]
    out = model.fuse(fx["input.image"], fx["input.text_ids"], fx["input.text_masks"])
    for h in hooks:
        h.remove()
    check(fx, "debug.text_layer5_out", captured[5])
    check(fx, "debug.fused_text_layer9_out", captured[9])
    check(fx, "debug.fused_text_layer11_out", captured[model.config.text.num_layers - 1])
    check(fx, "fused.text_feats", out.text_feats)
    check(fx, "fused.image_feats", out.image_feats)
    check(fx, "fused.cls_feats", out.cls_feats)
    check(fx, "itm.logits", model.itm_logits(out.cls_feats))
    check(fx, "vqa.logits", model.vqa_logits(out.cls_feats))
    check(fx, "debug.text_embeddings", model.text.embeddings(fx["input.text_ids"]))


@torch.no_grad()
def test_mlm(coarse):
    model, fx = coarse
    out = model.fuse(fx["input.image"], fx["input.text_ids_mlm"], fx["input.text_masks"])
    pos = fx["input.mlm_positions"]
    check(fx, "mlm.text_feats_at_positions", gather(out.text_feats, pos))
    check(fx, "mlm.logits_at_positions", gather(model.mlm_logits(out.text_feats), pos))


@torch.no_grad()
def test_nlvr2(coarse):
    model, fx = coarse
    images, ids, mask = fx["input.image"], fx["input.text_ids"], fx["input.text_masks"]
    b = ids.shape[0]
    left = model.fuse(images[0:1].expand(b, -1, -1, -1), ids, mask).cls_feats
    right = model.fuse(images[1:2].expand(b, -1, -1, -1), ids, mask).cls_feats
    check(fx, "nlvr2.cls_feats", torch.cat([left, right], dim=-1))
    check(fx, "nlvr2.logits", model.nlvr2_logits(left, right))


@torch.no_grad()
def test_dual_encoder(coarse):
    model, fx = coarse
    image_embed = model.encode_image(fx["input.image"])
    text_embed = model.encode_text(fx["input.text_ids"], fx["input.text_masks"])
    check(fx, "itc.image_embed", image_embed)
    check(fx, "itc.text_embed", text_embed)
    check(fx, "itc.sim_i2t", model.itc_logits(image_embed, text_embed))
    stages = model.vision(fx["input.image"])
    check(fx, "debug.uni_img_stage3_out", stages[2].flatten(1, 2))
    check(fx, "debug.uni_img_stage4_out", stages[3].flatten(1, 2))


@torch.no_grad()
def test_caption_mode(coarse):
    model, fx = coarse
    feats = model.caption_features(model.caption_image(fx["input.image"]), fx["input.text_ids"], fx["input.text_masks"])
    pos = fx["input.caption_positions"]
    check(fx, "caption.text_feats_at_positions", gather(feats, pos))
    check(fx, "caption.logits_at_positions", gather(model.mlm_logits(feats), pos))


def test_missing_fixture_directory_fails(monkeypatch, tmp_path):
    monkeypatch.setenv("FIBERVL_OFFICIAL_FIXTURES", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        fixture_dir()


def test_fixtures_travel_with_the_repository(monkeypatch):
    """Without FIBERVL_OFFICIAL_FIXTURES the parity tests read the copy inside the repository,
    so a clone with nothing beside it runs them."""
    monkeypatch.delenv("FIBERVL_OFFICIAL_FIXTURES", raising=False)
    repo = Path(__file__).resolve().parents[2]
    directory = fixture_dir()
    assert directory.resolve().is_relative_to(repo)
    for name in ("coarse_inputs_outputs.safetensors", "coarse_keys.json", "fine_inputs_outputs.safetensors",
                 "fine_keys.json", "README.md"):
        assert (directory / name).is_file(), name

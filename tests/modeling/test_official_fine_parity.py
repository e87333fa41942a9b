"""End-to-end parity with the official fine-grained FIBER detector (golden fixture B).

Official weights rebuilt from the fixture rule are saved as ``{"model": state}`` with the
``module.`` prefix DDP adds, converted with ``fibervl convert official-fine``, reloaded with
``FiberModel.from_pretrained``, and run through ``FiberModel.detect`` on the fixture inputs:
language features, every FPN level and the DyHead outputs must match within 1e-4.
"""

from __future__ import annotations

import pytest
import torch

from fibervl.cli import main as cli_main
from fibervl.modeling.fiber import FiberModel
from fibervl.testing.official_fixtures import fixture_dir, load_fixture, official_state_dict

ATOL = 1e-4


@pytest.fixture(scope="module")
def fine(tmp_path_factory):
    directory = fixture_dir()
    fx, _ = load_fixture("fine", directory)
    work = tmp_path_factory.mktemp("official_fine")
    state = {f"module.{k}": v for k, v in official_state_dict("fine", directory).items()}
    torch.save({"model": state, "iteration": 7}, work / "model_final.pth")
    del state
    assert cli_main(["convert", "official-fine", str(work / "model_final.pth"), str(work / "converted")]) == 0
    (work / "model_final.pth").unlink()
    model = FiberModel.from_pretrained(work / "converted").eval()
    captured = {}
    with torch.no_grad():
        text, stages = model.fuse_backbones(fx["input.image"], fx["input.input_ids"], fx["input.attention_mask"])
        captured["text"] = text
        out = model.detector(model.vision.feature_maps(stages), text, fx["input.attention_mask"])
        end_to_end = model.detect(fx["input.image"], fx["input.input_ids"], fx["input.attention_mask"])
    return fx, captured, out, end_to_end


def close(value, ref, name):
    assert value.shape == ref.shape, f"{name}: {tuple(value.shape)} != {tuple(ref.shape)}"
    diff = (value - ref).abs().max().item()
    assert diff <= ATOL, f"{name}: max |diff| {diff:.3e}"


def test_language_features(fine):
    fx, captured, _, _ = fine
    mask = fx["input.attention_mask"]
    close(captured["text"], fx["lang.hidden"], "lang.hidden")
    embedded = captured["text"] * mask[..., None]
    close(embedded, fx["lang.embedded"], "lang.embedded")
    close(embedded.sum(1) / mask.sum(-1, keepdim=True), fx["lang.aggregate"], "lang.aggregate")


def test_fpn_levels(fine):
    fx, _, out, _ = fine
    for i, level in enumerate(out.pyramid):
        close(level, fx[f"fpn.p{i + 3}"], f"fpn.p{i + 3}")


def test_dyhead_outputs(fine):
    fx, _, out, end_to_end = fine
    head = out.head
    close(head.proj_tokens, fx["dyhead.proj_tokens"], "proj_tokens")
    close(head.proj_tokens_bias, fx["dyhead.proj_tokens_bias"], "proj_tokens_bias")
    for level in range(5):
        ref = fx[f"dyhead.dot_product_logits.l{level}"]
        close(head.dot_product_logits[level][..., : ref.shape[-1]], ref, f"dot_product_logits.l{level}")
        close(head.bbox_reg[level], fx[f"dyhead.bbox_reg.l{level}"], f"bbox_reg.l{level}")
        close(head.centerness[level], fx[f"dyhead.centerness.l{level}"], f"centerness.l{level}")
    for level in (2, 3, 4):
        close(head.tower[level], fx[f"dyhead.tower_out.l{level}"], f"tower_out.l{level}")
    for a, b in zip(end_to_end.head.dot_product_logits, head.dot_product_logits):
        assert torch.equal(a, b)

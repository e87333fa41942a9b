import json

import pytest
import torch

from fibervl.convert.official_fine_head import convert_official_fine_head
from fibervl.modeling.detection import GroundingDetector
from fibervl.testing.official_fixtures import fixture_dir


@pytest.fixture(scope="module")
def official_head_state():
    """Zero tensors with the official names/shapes of every FPN and rpn key (from fine_keys.json)."""
    entries = json.loads((fixture_dir() / "fine_keys.json").read_text())
    return {
        e["key"]: torch.zeros(e["shape"])
        for e in entries
        if e["key"].startswith(("fusion_backbone.backbone.fpn.", "rpn."))
    }


def test_converts_every_key_and_loads_strictly(official_head_state):
    state = dict(official_head_state)
    state["fusion_backbone.backbone.body.layers.0.blocks.0.norm1.weight"] = torch.zeros(128)  # not ours: ignored
    converted, dropped = convert_official_fine_head(state)
    reasons = {d.split(":")[0] for d in dropped}
    assert reasons == {
        "rpn.head.cls_logits.weight",
        "rpn.head.cls_logits.bias",
        *(f"rpn.anchor_generator.cell_anchors.{i}" for i in range(5)),
    }
    assert len(converted) + len(dropped) == len(official_head_state)
    det = GroundingDetector()
    det.load_state_dict(converted, strict=True)
    assert converted["head.tower.blocks.3.conv_from_finer.norm.weight"] is state["rpn.head.dyhead_tower.3.DyConv.2.bn.weight"]
    assert converted["fpn.inner.2.weight"].shape == (256, 1024, 1, 1)


def test_unknown_key_raises_naming_it(official_head_state):
    state = dict(official_head_state)
    state["rpn.head.token_logits.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="rpn.head.token_logits.weight"):
        convert_official_fine_head(state)
    state = dict(official_head_state)
    state["fusion_backbone.backbone.fpn.fpn_inner1.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="fpn_inner1"):
        convert_official_fine_head(state)


def test_missing_key_raises(official_head_state):
    state = dict(official_head_state)
    del state["rpn.head.dyhead_tower.2.relu.fc.2.bias"]
    with pytest.raises(KeyError, match=r"head\.tower\.blocks\.2\.task_attn\.fc2\.bias"):
        convert_official_fine_head(state)
    state = dict(official_head_state)
    del state["fusion_backbone.backbone.fpn.top_blocks.p7.weight"]
    with pytest.raises(KeyError, match=r"fpn\.p7\.weight"):
        convert_official_fine_head(state)
    with pytest.raises(KeyError, match="not an official fine-grained head"):
        convert_official_fine_head({"rpn.head.bias0": torch.zeros(1)})

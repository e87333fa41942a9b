"""GLIP-style fusion in the detection head (``detection.head_fusion_layers``): absent by default,
wired between the FPN and the predictors when asked for, trained by the detector's loss, and
its config checked."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fibervl.config import FiberConfig, get_preset
from fibervl.errors import ConfigError
from fibervl.modeling.detection.head_fusion import BidirectionalCrossAttention, HeadFusion
from fibervl.modeling.detection.losses import GroundingLoss, GroundingTarget
from fibervl.modeling.detection.tuning import apply_tuning_mode
from fibervl.modeling.fiber import FiberModel


def _config(head_layers: int = 0, backbone_layers: int | None = None, alpha_init: float | None = None) -> FiberConfig:
    cfg = get_preset("fiber-tiny-fine")
    fusion = cfg.fusion
    if backbone_layers is not None:
        fusion = dataclasses.replace(fusion, num_layers=backbone_layers)
    if alpha_init is not None:
        fusion = dataclasses.replace(fusion, alpha_init=alpha_init)
    return cfg.replace(vision=dataclasses.replace(cfg.vision, image_size=64), fusion=fusion,
                       detection=dataclasses.replace(cfg.detection, head_fusion_layers=head_layers))


def _inputs():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 64, 64, generator=g)
    ids = torch.randint(5, 2000, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return images, ids, mask


@pytest.mark.parametrize("preset", ["fiber-tiny-fine", "fiber-base-fine"])
def test_the_presets_have_no_head_fusion(preset):
    cfg = get_preset(preset)
    assert cfg.detection.head_fusion_layers == 0
    # a config.json saved before the option existed reads as none
    data = cfg.to_dict()
    del data["detection"]["head_fusion_layers"], data["detection"]["head_fusion_heads"]
    assert FiberConfig.from_dict(data) == cfg


def test_default_builds_no_module_and_keeps_the_state_dict_keys():
    torch.manual_seed(0)
    plain = FiberModel(_config())
    assert plain.detector.head_fusion is None
    assert "head_fusion" not in plain.parts()
    keys = set(plain.state_dict())
    assert not [k for k in keys if "head_fusion" in k]
    assert {k.split(".")[1] for k in keys if k.startswith("detector.")} == {"fpn", "head", "location_prior"}

    # With head fusion the model holds the same weights (the same values: the module is built
    # last) plus the head fusion's own.
    torch.manual_seed(0)
    fused = FiberModel(_config(head_layers=2))
    fused_state = fused.state_dict()
    extra = set(fused_state) - keys
    assert keys <= set(fused_state)
    assert extra and all(k.startswith("detector.head_fusion.layers.") for k in extra)
    assert {k.split(".")[3] for k in extra} == {"0", "1"}
    assert all(torch.equal(fused_state[k], v) for k, v in plain.state_dict().items())


def test_closed_gates_compute_the_detector_without_head_fusion():
    """Gates at 0 (``fusion.alpha_init=0``) add nothing: the outputs equal the plain detector's
    (to rounding: the levels come back from the fusion in another memory layout, and the
    convolutions round differently); opened, the head fusion changes the box and token outputs."""
    torch.manual_seed(0)
    plain = FiberModel(_config(alpha_init=0.0)).eval()
    torch.manual_seed(0)
    fused = FiberModel(_config(head_layers=1, alpha_init=0.0)).eval()
    with torch.no_grad():
        a, b = plain.detect(*_inputs()).head, fused.detect(*_inputs()).head
        for x, y in zip(a.dot_product_logits + a.bbox_reg + a.centerness, b.dot_product_logits + b.bbox_reg + b.centerness):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
        for layer in fused.detector.head_fusion.layers:
            layer.visual_gate.fill_(1.0)
            layer.text_gate.fill_(1.0)
        c = fused.detect(*_inputs()).head
    assert not torch.allclose(c.bbox_reg[0], a.bbox_reg[0])
    assert not torch.allclose(c.proj_tokens, a.proj_tokens)  # the fused text reaches the token logits


def test_training_loss_reaches_every_head_fusion_weight():
    """Backbone fusion off, head fusion on (the GLIP-style layout): one backward of the
    detector's training loss (official losses + word-region alignment) gives every head fusion
    weight a gradient, and one optimiser step lowers nothing to NaN."""
    torch.manual_seed(0)
    model = FiberModel(_config(head_layers=2, backbone_layers=0)).train()
    assert model.config.fused_blocks() == []
    images, ids, mask = _inputs()
    positive = torch.zeros(1, ids.shape[1])
    positive[0, 1:3] = 1
    targets = [GroundingTarget(torch.tensor([[8.0, 8.0, 40.0, 36.0]]), positive),
               GroundingTarget(torch.tensor([[20.0, 4.0, 60.0, 30.0]]), positive)]
    out = model.detect(images, ids, mask)
    losses = model.detector.loss(out, targets, mask, loss_fn=GroundingLoss(align_loss_weight=4.0))
    assert "loss_align" in losses
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.detector.head_fusion.named_parameters()}
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values()), \
        [n for n, g in grads.items() if g is None or g.abs().sum() == 0]


def test_head_fusion_is_a_model_part_the_linear_probe_freezes():
    model = FiberModel(_config(head_layers=1))
    assert model.parts()["head_fusion"] == [model.detector.head_fusion]
    apply_tuning_mode(model, "linear_prob")
    assert not any(p.requires_grad for p in model.detector.head_fusion.parameters())
    assert any(p.requires_grad for p in model.detector.head.token_proj.parameters())


def test_padded_text_tokens_change_no_visual_token():
    """What the visual tokens read depends on the real text tokens only, whatever the padding holds."""
    torch.manual_seed(0)
    layer = BidirectionalCrossAttention(visual_dim=16, text_dim=12, num_heads=4, gate_init=1.0)
    visual, text = torch.randn(1, 10, 16), torch.randn(1, 5, 12)
    padded = torch.cat([text, 100 * torch.randn(1, 3, 12)], dim=1)
    short_v, short_t = layer(visual, text, torch.ones(1, 5))
    long_v, long_t = layer(visual, padded, torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]]))
    torch.testing.assert_close(long_v, short_v)
    torch.testing.assert_close(long_t[:, :5], short_t)


def test_the_pyramid_keeps_its_shapes():
    torch.manual_seed(0)
    fusion = HeadFusion(channels=8, text_dim=6, num_layers=2, num_heads=2, gate_init=1.0)
    pyramid = [torch.randn(2, 8, 6, 5), torch.randn(2, 8, 3, 3), torch.randn(2, 8, 1, 1)]
    fused, text = fusion(pyramid, torch.randn(2, 4, 6), torch.ones(2, 4))
    assert [f.shape for f in fused] == [p.shape for p in pyramid]
    assert text.shape == (2, 4, 6)
    assert all(not torch.allclose(f, p) for f, p in zip(fused, pyramid))


@pytest.mark.parametrize("changes, message", [
    ({"head_fusion_layers": -1}, r"detection.head_fusion_layers must be a whole number >= 0, got -1"),
    ({"head_fusion_layers": "2"}, r"detection.head_fusion_layers must be a whole number >= 0, got '2'"),
    ({"head_fusion_layers": True}, r"detection.head_fusion_layers must be a whole number >= 0, got True"),
    ({"head_fusion_layers": 1, "head_fusion_heads": 0}, r"head_fusion_heads=0 must be >= 1 and divide detection.channels=64"),
    ({"head_fusion_layers": 1, "head_fusion_heads": 3}, r"head_fusion_heads=3 must be >= 1 and divide detection.channels=64"),
])
def test_bad_head_fusion_settings_are_config_errors(changes, message):
    data = get_preset("fiber-tiny-fine").to_dict()
    data["detection"].update(changes)
    with pytest.raises(ConfigError, match=message):
        FiberConfig.from_dict(data)

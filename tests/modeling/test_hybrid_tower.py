"""The hybrid image tower (``vision.conv_stages``): conv stages below, Swin blocks and fusion above."""

import dataclasses

import pytest
import torch
from torch import nn

from fibervl.config import get_preset
from fibervl.errors import ConfigError
from fibervl.modeling.fiber import FiberModel
from fibervl.modeling.swin import ConvBlock, ConvDownsample, ConvStem, PatchEmbed, PatchMerging, SwinBlock


def _with_vision(cfg, **changes):
    return cfg.replace(vision=dataclasses.replace(cfg.vision, **changes))


def test_fiber_tiny_is_hybrid_and_fiber_base_is_the_official_swin():
    tiny = FiberModel(get_preset("fiber-tiny")).vision
    assert isinstance(tiny.patch_embed, ConvStem)
    kinds = [[type(b) for b in stage.blocks] for stage in tiny.stages]
    assert kinds == [[ConvBlock], [ConvBlock], [ConvBlock, ConvBlock], [SwinBlock, SwinBlock]]
    assert all(isinstance(s.downsample, ConvDownsample) for s in tiny.stages[:-1])
    base = get_preset("fiber-base").vision
    assert base.conv_stages == 0 and base.final_norm
    small_base = FiberModel(_with_vision(get_preset("fiber-tiny"), conv_stages=0)).vision
    assert isinstance(small_base.patch_embed, PatchEmbed)
    assert all(isinstance(s.downsample, PatchMerging) for s in small_base.stages[:-1])


def test_conv_stages_may_not_hold_fusion_or_exceed_the_stages():
    tiny = get_preset("fiber-tiny")
    with pytest.raises(ConfigError, match="fusion needs Swin blocks"):
        _with_vision(tiny, conv_stages=4)
    with pytest.raises(ConfigError, match="conv_stages must lie in"):
        _with_vision(tiny.replace(fusion=dataclasses.replace(tiny.fusion, num_layers=0)), conv_stages=5)


def test_hybrid_stage_grids_have_the_swin_shapes():
    model = FiberModel(get_preset("fiber-tiny")).eval()
    with torch.no_grad():
        stages = model.vision(torch.randn(2, 3, 128, 128))
    assert [tuple(s.shape) for s in stages] == [(2, 32, 32, 32), (2, 16, 16, 64), (2, 8, 8, 128), (2, 4, 4, 256)]


def test_freezing_the_prefix_keeps_its_batchnorms_in_eval_mode():
    """A frozen conv stage must compute the same thing for an image whatever else is in the batch."""
    torch.manual_seed(0)
    model = FiberModel(get_preset("fiber-tiny"))
    model.train()
    batch = torch.randn(4, 3, 128, 128)
    model.freeze_prefix()
    model.train()  # a trainer calls this again after freezing
    norms = [m for m in model.vision.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    assert model.vision.stages[-1].blocks[0].training  # the unfrozen top still trains
    running = norms[0].running_mean.clone()
    with torch.no_grad():
        alone = model.image_prefix(batch[:1])
        together = model.image_prefix(batch)[:1]
    torch.testing.assert_close(alone, together, rtol=1e-4, atol=1e-5)
    assert torch.equal(norms[0].running_mean, running)


def test_unfrozen_batchnorms_train_with_batch_statistics():
    model = FiberModel(get_preset("fiber-tiny")).train()
    norm = next(m for m in model.vision.modules() if isinstance(m, nn.BatchNorm2d))
    assert norm.training
    before = norm.running_mean.clone()
    model.image_prefix(torch.randn(2, 3, 128, 128))
    assert not torch.equal(norm.running_mean, before)

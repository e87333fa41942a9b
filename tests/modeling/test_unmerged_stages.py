"""``vision.unmerged_stages``: a stage that keeps the previous stage's grid and width."""

import dataclasses

import pytest
import torch

from fibervl.config import DetectionConfig, get_preset
from fibervl.errors import ConfigError
from fibervl.modeling.fiber import FiberModel


def _vision(cfg, **changes):
    return cfg.replace(vision=dataclasses.replace(cfg.vision, **changes))


def _merged_tiny():
    """fiber-tiny, whose tower merges before every stage (the official layout)."""
    cfg = get_preset("fiber-tiny")
    assert cfg.vision.unmerged_stages == ()
    return cfg


def test_official_presets_merge_every_stage():
    for name in ("fiber-base", "fiber-base-fine"):
        v = get_preset(name).vision
        assert v.unmerged_stages == ()
        assert v.stage_dims() == [128, 256, 512, 1024] and v.stage_strides() == [4, 8, 16, 32]


def test_an_unmerged_last_stage_keeps_the_grid_and_width_of_the_stage_below():
    cfg = _vision(_merged_tiny(), unmerged_stages=(3,), num_heads=(1, 2, 4, 4), window_size=8)
    assert cfg.vision.stage_dims() == [32, 64, 128, 128]
    assert cfg.vision.stage_strides() == [4, 8, 16, 16]
    model = FiberModel(cfg).eval()
    assert model.vision.stages[2].downsample is None
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        stages = model.vision(images)
        tokens = model.unfused_image_tokens(images)
        fused = model.fuse(images, torch.randint(3, 100, (2, 7)), torch.ones(2, 7, dtype=torch.long))
    assert [tuple(s.shape) for s in stages] == [(2, 32, 32, 32), (2, 16, 16, 64), (2, 8, 8, 128), (2, 8, 8, 128)]
    assert tokens.shape == (2, 64, 128)
    assert torch.isfinite(fused.cls_feats).all()


def test_an_unmerged_stage_in_the_middle_of_an_all_swin_tower():
    cfg = _vision(_merged_tiny(), conv_stages=0, unmerged_stages=(2,), num_heads=(1, 2, 2, 4))
    assert cfg.vision.stage_dims() == [32, 64, 64, 128] and cfg.vision.stage_strides() == [4, 8, 8, 16]
    with torch.no_grad():
        stages = FiberModel(cfg).eval().vision(torch.randn(1, 3, 128, 128))
    assert [tuple(s.shape) for s in stages] == [(1, 32, 32, 32), (1, 16, 16, 64), (1, 16, 16, 64), (1, 8, 8, 128)]


def test_unmerged_stages_are_checked():
    tiny = _merged_tiny()
    with pytest.raises(ConfigError, match="unmerged_stages"):
        _vision(tiny, unmerged_stages=(0,))
    with pytest.raises(ConfigError, match="unmerged_stages"):
        _vision(tiny, unmerged_stages=(4,))
    # 112 px is a multiple of the unmerged tower's stride 16, not of the merged tower's 32
    _vision(tiny, unmerged_stages=(3,), num_heads=(1, 2, 4, 4), image_size=112)
    with pytest.raises(ConfigError, match="last stage's stride 32"):
        _vision(tiny, image_size=112)


def test_detection_strides_must_match_the_feature_stages():
    fine = get_preset("fiber-tiny-fine")
    assert list(fine.detection.strides[:3]) == [fine.vision.stage_strides()[s] for s in fine.vision.feature_norms]
    with pytest.raises(ConfigError, match="detection.strides"):
        fine.replace(detection=dataclasses.replace(fine.detection, strides=(8, 16, 48, 64, 128)))
    with pytest.raises(ConfigError, match="detection.strides"):
        fine.replace(detection=DetectionConfig(channels=64, num_groups=8, strides=(8, 16, 32, 64)))


def test_a_detector_reads_an_unmerged_stage_at_its_stride():
    """The FPN takes two maps of one size (stride 16 twice); P6 and P7 halve from there."""
    fine = get_preset("fiber-tiny-fine")
    cfg = fine.replace(vision=dataclasses.replace(fine.vision, unmerged_stages=(3,), num_heads=(1, 2, 4, 4), window_size=8),
                       detection=dataclasses.replace(fine.detection, strides=(8, 16, 16, 32, 64)))
    model = FiberModel(cfg).eval()
    with torch.no_grad():
        out = model.detect(torch.randn(1, 3, 128, 128), torch.randint(3, 100, (1, 6)), torch.ones(1, 6, dtype=torch.long))
    assert [tuple(p.shape[-2:]) for p in out.pyramid] == [(16, 16), (8, 8), (8, 8), (4, 4), (2, 2)]
    assert [a.shape[0] for a in out.anchors] == [256, 64, 64, 16, 4]
    assert all(torch.isfinite(p).all() for p in out.pyramid)

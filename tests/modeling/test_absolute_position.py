"""``vision.absolute_position``: a learned position embedding on the grid entering the first
attention stage, so that an image token says where it lies."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from fibervl.config import FiberConfig, get_preset
from fibervl.errors import ConfigError
from fibervl.modeling.fiber import FiberModel
from fibervl.modeling.swin import AbsolutePosition


def _with_vision(cfg, **changes):
    return cfg.replace(vision=dataclasses.replace(cfg.vision, **changes))


def _tiny_with_positions():
    return _with_vision(get_preset("fiber-tiny"), absolute_position=True)


def test_positions_go_on_the_first_swin_stage_and_no_preset_has_them():
    tower = FiberModel(_tiny_with_positions()).vision
    assert tower.position_stage == 3  # above the three conv stages
    assert tuple(tower.absolute_position.table.shape) == (1, 256, 4, 4)  # 128 px / stride 32
    for name in ("fiber-tiny", "fiber-tiny-fine", "fiber-base", "fiber-base-fine"):
        assert not get_preset(name).vision.absolute_position  # tried on fiber-tiny: docs/results.md


def test_the_table_is_added_at_its_own_grid_and_resized_to_any_other():
    pos = AbsolutePosition(8, (4, 4))
    zeros = torch.zeros(2, 4, 4, 8)
    assert torch.equal(pos(zeros), pos.table.permute(0, 2, 3, 1).expand(2, -1, -1, -1))
    out = pos(torch.zeros(1, 8, 6, 8))
    expected = F.interpolate(pos.table, size=(8, 6), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out, expected.permute(0, 2, 3, 1))
    x = torch.randn(1, 3, 5, 8)
    torch.testing.assert_close(pos(x) - x, pos(torch.zeros_like(x)))  # added, not mixed in


def test_identical_content_at_two_places_gives_tokens_that_differ():
    """Without positions the tower cannot tell two places apart when their content is the same:
    a plain image gives equal tokens away from the border (the conv stages' zero padding marks
    only the tokens whose receptive field reaches it). With them, those tokens differ."""
    images = torch.full((1, 3, 1024, 1024), 0.3)
    for absolute, differ in ((False, False), (True, True)):
        torch.manual_seed(0)
        model = FiberModel(_with_vision(get_preset("fiber-tiny"), absolute_position=absolute)).eval()
        with torch.no_grad():
            tokens = model.unfused_image_tokens(images).reshape(32, 32, -1)
        interior = tokens[15:17, 15:17].reshape(4, -1)
        assert (not torch.allclose(interior[0], interior[3], atol=1e-5)) == differ


def test_the_unimodal_and_the_fused_paths_both_add_it():
    torch.manual_seed(0)
    model = FiberModel(_tiny_with_positions()).eval()
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        model.vision.absolute_position.table.normal_()
        uni = model.vision(images)[-1].flatten(1, 2)
        tokens = model.unfused_image_tokens(images)
        model.vision.absolute_position.table.zero_()
        without = model.unfused_image_tokens(images)
    torch.testing.assert_close(uni, tokens)
    assert not torch.allclose(tokens, without)


def test_the_table_trains_with_a_frozen_prefix_unless_it_lies_in_the_prefix():
    tiny = FiberModel(_tiny_with_positions())
    tiny.freeze_prefix()
    assert tiny.vision.absolute_position.table.requires_grad  # fusion starts at the first Swin stage
    # An all-Swin tower: the positions are added after the patch embedding, below the fused blocks.
    swin = FiberModel(_with_vision(_tiny_with_positions(), conv_stages=0))
    assert swin.vision.position_stage == 0
    assert tuple(swin.vision.absolute_position.table.shape) == (1, 32, 32, 32)
    swin.freeze_prefix()
    assert not swin.vision.absolute_position.table.requires_grad


def test_an_all_convolutional_tower_has_nowhere_to_add_it():
    tiny = _tiny_with_positions()
    no_fusion = tiny.replace(fusion=dataclasses.replace(tiny.fusion, num_layers=0))
    with pytest.raises(ConfigError, match="absolute_position needs an attention stage"):
        _with_vision(no_fusion, conv_stages=4).validate()
    _with_vision(no_fusion, conv_stages=4, absolute_position=False).validate()


def test_a_config_saved_before_the_key_existed_reads_as_without_positions():
    saved = _tiny_with_positions().to_dict()
    del saved["vision"]["absolute_position"]
    config = FiberConfig.from_dict(json.loads(json.dumps(saved)))
    assert not config.vision.absolute_position
    assert FiberModel(config).vision.absolute_position is None

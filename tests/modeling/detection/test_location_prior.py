"""The expression's prior over places (``detection.location_prior``): off in the official presets,
zero at the start (the detector computes what it did), a term per location that the expression's
real tokens choose and every token's logit shares, and learnt by the detector's loss."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fibervl.config import FiberConfig, get_preset
from fibervl.modeling.detection.location import LOCATION_CODE_DIM, LocationPrior, location_code
from fibervl.modeling.detection.losses import GroundingTarget
from fibervl.modeling.fiber import FiberModel


def _config(location_prior: bool) -> FiberConfig:
    cfg = get_preset("fiber-tiny-fine")
    return cfg.replace(vision=dataclasses.replace(cfg.vision, image_size=64),
                       detection=dataclasses.replace(cfg.detection, location_prior=location_prior))


def _inputs():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 64, 64, generator=g)
    ids = torch.randint(5, 500, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return images, ids, mask


def test_official_presets_have_none_and_older_configs_read_as_none():
    assert get_preset("fiber-tiny-fine").detection.location_prior
    base = get_preset("fiber-base-fine")
    assert not base.detection.location_prior
    data = base.to_dict()
    del data["detection"]["location_prior"]  # a config.json saved before the option existed
    assert FiberConfig.from_dict(data) == base
    assert FiberModel(_config(False)).detector.location_prior is None


def test_location_code_orders_places_row_major():
    code = location_code(2, 3)
    assert code.shape == (6, LOCATION_CODE_DIM)
    x, y = code[:, 0], code[:, 1]
    # location h * W + w has its centre at ((w + 1/2) / W, (h + 1/2) / H)
    assert torch.allclose(x, torch.tensor([1, 3, 5, 1, 3, 5]) / 6 - 0.5)
    assert torch.allclose(y, torch.tensor([1, 1, 1, 3, 3, 3]) / 4 - 0.5)


def test_a_new_prior_changes_nothing_until_it_is_learnt():
    torch.manual_seed(0)
    plain = FiberModel(_config(False)).eval()
    torch.manual_seed(0)
    placed = FiberModel(_config(True)).eval()
    state = placed.state_dict()
    assert set(state) - set(plain.state_dict()) == {"detector.location_prior.weight", "detector.location_prior.bias"}
    # built from zeros: every other weight starts where it did without the prior
    assert all(torch.equal(state[k], v) for k, v in plain.state_dict().items())
    with torch.no_grad():
        a, b = plain.detect(*_inputs()).head, placed.detect(*_inputs()).head
    assert all(torch.equal(x, y) for x, y in zip(a.dot_product_logits, b.dot_product_logits))


def test_the_prior_shifts_every_token_of_a_location_alike():
    torch.manual_seed(0)
    model = FiberModel(_config(True)).eval()
    images, ids, mask = _inputs()
    with torch.no_grad():
        before = model.detect(images, ids, mask).head.dot_product_logits
        model.detector.location_prior.bias[0] = -4.0  # prefer the left: a smaller x scores higher
        after = model.detect(images, ids, mask).head.dot_product_logits
    for level_before, level_after in zip(before, after):
        side = int(level_before.shape[1] ** 0.5)
        shift = level_after - level_before  # [B, H*W, T]
        expected = -4.0 * location_code(side, side)[:, 0]
        assert torch.allclose(shift, expected[None, :, None].expand_as(shift), atol=1e-4)


def test_the_real_tokens_choose_the_prior():
    prior = LocationPrior(text_dim=8)
    with torch.no_grad():
        prior.weight.normal_()
    g = torch.Generator().manual_seed(1)
    text = torch.randn(2, 5, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    out, = prior(text, mask, [(3, 4)])
    assert out.shape == (2, 12)
    assert not torch.allclose(out[0], out[1])
    padded = text.clone()
    padded[1, 3:] = 100.0  # what the padding holds does not count
    assert torch.equal(prior(padded, mask, [(3, 4)])[0], out)


def test_the_loss_teaches_the_prior():
    torch.manual_seed(0)
    model = FiberModel(_config(True)).train()
    images, ids, mask = _inputs()
    out = model.detect(images, ids, mask)
    positive = torch.zeros(1, ids.shape[1])
    positive[0, 1:3] = 1
    targets = [GroundingTarget(torch.tensor([[4.0, 10.0, 30.0, 40.0]]), positive) for _ in range(2)]
    losses = model.detector.loss(out, targets, mask)
    sum(losses.values()).backward()
    grad = model.detector.location_prior.weight.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("height,width", [(1, 1), (4, 7)])
def test_location_code_is_finite_for_any_map(height, width):
    assert torch.isfinite(location_code(height, width)).all()

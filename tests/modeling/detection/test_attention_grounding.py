"""The attention-grounding term of fine-grained training: a recorder that keeps what each fused
word attends to (the weights the layer used, with gradients), the loss that asks a grounded word
to look at its boxes, and ``FineObjectives.attention_align`` that adds it to the detector's loss."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fibervl.config import get_preset
from fibervl.modeling.detection.losses import GroundingTarget, attention_grounding_loss
from fibervl.modeling.fiber import FiberModel
from fibervl.modeling.fusion import TextToImageAttention, TextToImageAttentionRecorder
from fibervl.modeling.layers import merge_heads, split_heads
from fibervl.tasks.grounding import FineGrainedTask, FineObjectives


def test_the_recorder_keeps_the_weights_each_layer_attends_with():
    torch.manual_seed(0)
    layer = TextToImageAttention(dim=8, image_dim=6, num_heads=2)
    layer.alpha.data.fill_(1.0)
    recorder = TextToImageAttentionRecorder(torch.nn.Sequential(layer))
    text, image = torch.randn(3, 5, 8), torch.randn(3, 16, 6)
    with recorder:
        out = layer(text, image)
    (weights,) = recorder.maps
    assert weights.shape == (3, 2, 5, 16) and torch.allclose(weights.sum(-1), torch.ones(3, 2, 5))
    # the recorded weights times the values give the layer's own output
    assert torch.allclose(layer.out(merge_heads(weights @ split_heads(layer.value(image), 2))), out, atol=1e-5)
    layer(text, image)  # outside the block: not recorded
    assert len(recorder.maps) == 1
    with recorder:  # a new block starts empty
        layer(text, image)
    assert len(recorder.maps) == 1
    with pytest.raises(ValueError, match="no text-to-image attention"):
        TextToImageAttentionRecorder(torch.nn.Linear(2, 2))


def _target(boxes, positive_map):
    return GroundingTarget(torch.tensor(boxes, dtype=torch.float32), torch.tensor(positive_map, dtype=torch.float32))


def test_the_loss_is_minus_log_the_mass_on_the_cells_a_words_boxes_overlap():
    # a 64 x 96 input read as a 2 x 3 grid (stride 32); token 1 grounds a box over cells 0 and 1
    target = _target([[4.0, 4.0, 40.0, 20.0]], [[0, 1, 0]])
    uniform = torch.full((1, 2, 3, 6), 1 / 6)
    assert attention_grounding_loss([uniform], (64, 96), [target]).item() == pytest.approx(math.log(3))
    looking = uniform.clone()
    looking[0, :, 1] = torch.tensor([0.5, 0.49, 0.01, 0.0, 0.0, 0.0])
    assert attention_grounding_loss([looking], (64, 96), [target]).item() == pytest.approx(-math.log(0.99), abs=1e-6)
    elsewhere = uniform.clone()
    elsewhere[0, :, 1] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    assert attention_grounding_loss([elsewhere], (64, 96), [target]).item() > 10
    # an image without boxes adds nothing; the layers are averaged
    empty = _target(torch.zeros(0, 4).tolist(), torch.zeros(0, 3).tolist())
    two = torch.cat([uniform, uniform])
    assert attention_grounding_loss([two, two], (64, 96), [target, empty]).item() == pytest.approx(math.log(3))
    # nothing grounded at all: zero, and still differentiable
    weights = uniform.clone().requires_grad_()
    loss = attention_grounding_loss([weights], (64, 96), [_target([[4.0, 4.0, 40.0, 20.0]], [[0, 0, 0]])])
    loss.backward()
    assert loss.item() == 0 and weights.grad is not None


def _fine_model() -> FiberModel:
    cfg = get_preset("fiber-tiny-fine")
    return FiberModel(cfg.replace(vision=dataclasses.replace(cfg.vision, image_size=64)))


def test_attention_align_adds_its_term_and_trains_the_words_queries():
    torch.manual_seed(0)
    model = _fine_model()
    g = torch.Generator().manual_seed(0)
    batch = {"images": torch.randn(2, 3, 64, 64, generator=g), "input_ids": torch.randint(5, 500, (2, 8), generator=g),
             "attention_mask": torch.ones(2, 8, dtype=torch.long),
             "boxes": [torch.tensor([[2.0, 2.0, 30.0, 30.0]]), torch.tensor([[34.0, 34.0, 60.0, 60.0]])],
             "positive_maps": [torch.tensor([[0.0, 1.0, 1.0, 0, 0, 0, 0, 0]]), torch.tensor([[0.0, 0, 0, 1.0, 0, 0, 0, 0]])]}
    plain = FineGrainedTask().training_step(model, batch)
    assert "loss_attention" not in plain
    task = FineGrainedTask(FineObjectives(attention_align=2.0))
    out = task.training_step(model, batch)
    assert out["loss_attention"].item() > 0
    # the task keeps one recorder per model: a second step records that step's maps alone
    assert task.training_step(model, batch)["loss_attention"].item() == pytest.approx(out["loss_attention"].item())
    assert out["loss"].item() == pytest.approx(plain["loss"].item() + out["loss_attention"].item(), rel=1e-4)
    model.zero_grad()
    out["loss_attention"].backward()
    queries = [m.query.weight.grad for m in model.modules() if isinstance(m, TextToImageAttention)]
    assert queries and all(q is not None and q.abs().sum() > 0 for q in queries)
    with pytest.raises(ValueError, match="attention_align must be >= 0"):
        FineObjectives(attention_align=-1.0)

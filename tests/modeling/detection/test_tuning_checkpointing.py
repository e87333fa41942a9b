"""The official fine-tuning modes freeze what they say and train the rest; activation
checkpointing changes neither the loss nor the gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fibervl.config import get_preset
from fibervl.modeling.detection.tuning import TRAINED_PARTS, apply_tuning_mode, needs_prompt
from fibervl.modeling.fiber import FiberModel

PREDICTORS = ("detector.head.bbox_pred.", "detector.head.centerness.", "detector.head.token_proj.",
              "detector.head.log_scale", "detector.head.bias_lang", "detector.head.bias0", "detector.location_prior.")


def _config(prompt_tokens: int = 0, tower_blocks: int = 0, dropout: float = 0.0):
    cfg = get_preset("fiber-tiny-fine")
    return cfg.replace(
        vision=dataclasses.replace(cfg.vision, image_size=64, drop_path_rate=0.2 if dropout else 0.0),
        text=dataclasses.replace(cfg.text, dropout=dropout),
        detection=dataclasses.replace(cfg.detection, prompt_tuning_tokens=prompt_tokens, num_blocks=tower_blocks),
    )


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, 64, 64, generator=g)
    ids = torch.randint(5, 2000, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return images, ids, mask


def _detector_scalar(model: FiberModel, images, ids, mask) -> torch.Tensor:
    head = model.detect(images, ids, mask).head
    return sum(t.float().square().mean() for level in (head.bbox_reg, head.centerness, head.dot_product_logits)
               for t in level)


EXPECTED = {
    "linear_prob": lambda n: n.startswith(PREDICTORS),
    "language_prompt_v1": lambda n: n.startswith("text."),
    "language_prompt_v2": lambda n: n == "text_prompt_offsets",
    "language_prompt_v3": lambda n: n.startswith("text.") or n.startswith(PREDICTORS),
    "language_prompt_v4": lambda n: n == "text_prompt_offsets" or n.startswith(PREDICTORS),
}


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_each_mode_trains_exactly_its_parts(mode):
    torch.manual_seed(0)
    model = FiberModel(_config(prompt_tokens=16 if needs_prompt(mode) else 0, dropout=0.1))
    apply_tuning_mode(model, mode)
    names = [n for n, _ in model.named_parameters()]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in names if EXPECTED[mode](n)}, mode
    assert trainable and len(trainable) < len(names)

    # One optimiser step moves exactly the trainable weights.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    _detector_scalar(model, *_inputs()).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    # Frozen parts stay in eval mode when the model trains (no dropout or drop path there).
    frozen_vision = "vision" not in (TRAINED_PARTS[mode] or ())
    assert model.vision.training is not frozen_vision
    assert model.text.training is (mode in ("language_prompt_v1", "language_prompt_v3"))


def test_full_mode_freezes_nothing_and_unknown_modes_are_named():
    model = FiberModel(_config())
    assert apply_tuning_mode(model, "full") == 0
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="unknown tuning mode 'probe'.*linear_prob"):
        apply_tuning_mode(model, "probe")
    with pytest.raises(ValueError, match="prompt_tuning_tokens"):
        apply_tuning_mode(model, "language_prompt_v2")
    with pytest.raises(ValueError, match="no detection head"):
        apply_tuning_mode(FiberModel(get_preset("fiber-tiny")), "linear_prob")


def test_prompt_offsets_start_at_zero_and_change_nothing_until_trained():
    torch.manual_seed(0)
    plain = FiberModel(_config()).eval()
    prompted = FiberModel(_config(prompt_tokens=16)).eval()
    state = plain.state_dict()
    prompted.load_state_dict({**state, "text_prompt_offsets": torch.zeros(16, 128)}, strict=True)
    inputs = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(_detector_scalar(prompted, *inputs), _detector_scalar(plain, *inputs), rtol=0, atol=0)
        prompted.text_prompt_offsets.fill_(0.5)
        assert not torch.equal(_detector_scalar(prompted, *inputs), _detector_scalar(plain, *inputs))
    long_ids = torch.randint(5, 2000, (1, 20))
    with pytest.raises(ValueError, match="20 text tokens.*16 positions"):
        prompted.detect(inputs[0][:1], long_ids, torch.ones_like(long_ids))


def test_model_spec_builds_the_prompt_and_freezes():
    from fibervl.data.tokenizer import train_bytelevel_bpe
    from fibervl.experiment import ModelSpec

    tokenizer = train_bytelevel_bpe(["a red star beside a blue heart"] * 4, vocab_size=300)
    spec = ModelSpec(preset="fiber-tiny-fine", tuning="language_prompt_v2", activation_checkpointing=True)
    model = spec.build(tokenizer, init_as="weights")
    rows = model.config.detection.max_query_len
    assert model.text_prompt_offsets.shape == (rows, model.config.text.hidden_size)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"text_prompt_offsets"}
    assert model._checkpoint_blocks and model.detector.head.tower.checkpointing
    with pytest.raises(ValueError, match="unknown tuning mode"):
        ModelSpec(preset="fiber-tiny-fine", tuning="v2").build(tokenizer, init_as="weights")


@pytest.mark.parametrize("tower_blocks", [0, 1])
def test_activation_checkpointing_keeps_loss_and_gradients(tower_blocks, monkeypatch):
    import fibervl.modeling.detection.dyhead as dyhead
    import fibervl.modeling.fiber as fiber

    calls = {"backbone": 0, "head": 0}

    def counting(part, real):
        def wrapped(*args, **kwargs):
            calls[part] += 1
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(fiber, "checkpoint", counting("backbone", fiber.checkpoint))
    monkeypatch.setattr(dyhead, "checkpoint", counting("head", dyhead.checkpoint))
    torch.manual_seed(0)
    model = FiberModel(_config(tower_blocks=tower_blocks, dropout=0.1).replace(heads=("itc", "itm"))).train()
    for name, p in model.named_parameters():
        if name.endswith(".alpha"):  # open the fusion gates so both directions carry gradient
            torch.nn.init.constant_(p, 0.5)
    inputs = _inputs(1)

    def loss_and_grads(checkpointing: bool):
        model.set_activation_checkpointing(backbone=checkpointing, head=checkpointing)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)  # the same dropout and drop-path draws in both runs
        loss = (_detector_scalar(model, *inputs) + model.fuse(*inputs).cls_feats.square().mean()
                + model.encode_text(*inputs[1:]).sum())
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss_plain, grads_plain = loss_and_grads(False)
    loss_ckpt, grads_ckpt = loss_and_grads(True)
    torch.testing.assert_close(loss_ckpt, loss_plain, rtol=0, atol=0)
    assert grads_ckpt.keys() == grads_plain.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], rtol=1e-5, atol=1e-7, msg=name)
    # every Swin block and text layer of the three passes ran checkpointed, and each DyHead block
    swin_blocks, text_layers = sum(model.config.vision.depths), model.config.text.num_layers
    assert calls["backbone"] == 2 * (swin_blocks + text_layers) + text_layers
    assert calls["head"] == tower_blocks
    with torch.no_grad():  # inference never checkpoints
        model.fuse(*inputs)
    assert calls["backbone"] == 2 * (swin_blocks + text_layers) + text_layers

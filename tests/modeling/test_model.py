"""Behaviour of FiberModel on a micro config: modes, gating, padding, gradients, bf16."""

from __future__ import annotations

import pytest
import torch

from fibervl.modeling.fiber import FiberModel
from fibervl.modeling.fusion import ImageToTextAttention, TextToImageAttention
from fibervl.testing.configs import micro_config
from fibervl.testing.models import set_fusion_gates


def test_fusion_layout_pairs_top_blocks(micro):
    assert micro.fused_blocks() == [(3, 0), (3, 1)]
    assert micro.fused_text_layers() == [1, 2]
    model = FiberModel(micro)
    assert model.vision.stages[3].blocks[0].i2t is not None
    assert model.vision.stages[2].blocks[1].i2t is None
    assert [layer.t2i is not None for layer in model.text.layers] == [False, True, True]


@torch.no_grad()
def test_zero_alpha_fusion_equals_unimodal(batch):
    images, ids, mask = batch
    model = FiberModel(micro_config(skip_last_text_norm=False)).eval()
    set_fusion_gates(model, 0.0)
    out = model.fuse(images, ids, mask)
    uni_stages = model.vision(images)
    for fused, uni in zip(out.image_stages, uni_stages):
        torch.testing.assert_close(fused, uni, rtol=0, atol=0)
    torch.testing.assert_close(out.text_hidden, model.text(ids, mask), rtol=0, atol=0)
    # And with active gates the outputs do change.
    set_fusion_gates(model, 0.5)
    assert not torch.allclose(model.fuse(images, ids, mask).cls_feats, out.cls_feats)


def test_dual_mode_calls_no_cross_attention(micro, batch):
    images, ids, mask = batch
    model = FiberModel(micro).eval()
    calls = []
    for module in model.modules():
        if isinstance(module, (ImageToTextAttention, TextToImageAttention)):
            module.register_forward_hook(lambda m, a, o: calls.append(type(m).__name__))
    with torch.no_grad():
        image_embed = model.encode_image(images)
        text_embed = model.encode_text(ids, mask)
    assert calls == []
    assert image_embed.shape == (2, 24) and text_embed.shape == (2, 24)
    torch.testing.assert_close(image_embed.norm(dim=-1), torch.ones(2))
    with torch.no_grad():
        model.fuse(images, ids, mask)
    assert sorted(set(calls)) == ["ImageToTextAttention", "TextToImageAttention"]
    assert len(calls) == 4


@torch.no_grad()
def test_padding_does_not_change_real_tokens(micro, batch):
    images, ids, mask = batch
    model = FiberModel(micro).eval()
    set_fusion_gates(model, 0.7)
    padded_ids = torch.cat([ids, torch.ones(2, 5, dtype=ids.dtype)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 5, dtype=mask.dtype)], dim=1)
    a, b = model.fuse(images, ids, mask), model.fuse(images, padded_ids, padded_mask)
    real = mask.bool()
    torch.testing.assert_close(b.text_feats[:, :9][real], a.text_feats[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.image_feats, a.image_feats, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.cls_feats, a.cls_feats, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.encode_text(padded_ids, padded_mask), model.encode_text(ids, mask), atol=1e-5, rtol=1e-5)
    tokens = model.caption_image(images)
    ca, cb = model.caption_features(tokens, ids, mask), model.caption_features(tokens, padded_ids, padded_mask)
    torch.testing.assert_close(cb[:, :9][real], ca[real], atol=1e-5, rtol=1e-5)


def test_caption_mode_is_causal(micro, batch):
    images, ids, mask = batch
    model = FiberModel(micro).eval()
    set_fusion_gates(model, 0.7)
    tokens = model.caption_image(images)
    with torch.no_grad():
        full = model.caption_features(tokens, ids, mask)
        changed = ids.clone()
        changed[:, 5:] = 7
        prefix = model.caption_features(tokens, changed, mask)
    torch.testing.assert_close(prefix[:, :5], full[:, :5], atol=1e-6, rtol=0)
    assert not torch.allclose(prefix[0, 5:], full[0, 5:])


def test_gradients_reach_alphas_and_heads(micro, batch):
    images, ids, mask = batch
    model = FiberModel(micro).train()
    out = model.fuse(images, ids, mask)
    loss = model.itm_logits(out.cls_feats).logsumexp(-1).mean() + model.mlm_logits(out.text_feats).mean()
    loss.backward()
    alphas = {n: p.grad for n, p in model.named_parameters() if n.endswith(".alpha")}
    assert len(alphas) == 4
    for name, grad in alphas.items():
        assert grad is not None and grad.abs().item() > 0, name


def test_heads_shapes(micro, batch):
    images, ids, mask = batch
    model = FiberModel(micro).eval()
    with torch.no_grad():
        out = model.fuse(images, ids, mask)
        assert out.text_feats.shape == (2, 9, 24)
        assert out.image_feats.shape == (2, 4, 24)
        assert out.cls_feats.shape == (2, 48)
        assert model.vqa_logits(out.cls_feats).shape == (2, 7)
        assert model.nlvr2_logits(out.cls_feats, out.cls_feats).shape == (2, 2)
        assert model.mlm_logits(out.text_feats).shape == (2, 9, 100)


def test_missing_head_is_a_clear_error(batch):
    images, ids, mask = batch
    model = FiberModel(micro_config().replace(heads=("itm",)))
    with pytest.raises(ValueError, match="no 'vqa' head"):
        model.vqa_logits(torch.zeros(1, 48))
    with pytest.raises(ValueError, match="without the caption head"):
        model.caption_features(torch.zeros(2, 4, 128), ids, mask)
    with pytest.raises(ValueError, match="without dual-encoder"):
        model.encode_image(images)
    backbone_only = FiberModel(micro_config().replace(heads=()))
    with pytest.raises(ValueError, match="without fusion-mode projections"):
        backbone_only.fuse(images, ids, mask)
    text, stages = backbone_only.fuse_backbones(images, ids, mask)
    assert text.shape == (2, 9, 32) and [s.shape[-1] for s in stages] == [16, 32, 64, 128]


def test_bf16_autocast_and_bf16_weights(micro, batch):
    images, ids, mask = batch
    model = FiberModel(micro).eval()
    set_fusion_gates(model, 0.5)
    with torch.no_grad():
        ref = model.fuse(images, ids, mask).cls_feats
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model.fuse(images, ids, mask).cls_feats
        model16 = FiberModel(micro).eval()
        model16.load_state_dict(model.state_dict())
        model16.to(torch.bfloat16)
        pure = model16.fuse(images.bfloat16(), ids, mask).cls_feats
    assert pure.dtype == torch.bfloat16
    for value in (auto.float(), pure.float()):
        assert (value - ref).norm() / ref.norm() < 2e-2


def test_non_multiple_grid_pads_and_shifts():
    """The detection Swin rule: grids not divisible by the window are padded; shifts still apply."""
    cfg = micro_config()
    cfg.vision.single_window_no_shift = False
    model = FiberModel(cfg).eval()
    with torch.no_grad():
        stages = model.vision(torch.randn(1, 3, 72, 88))
    assert [tuple(s.shape[1:3]) for s in stages] == [(18, 22), (9, 11), (5, 6), (3, 3)]
    assert all(torch.isfinite(s).all() for s in stages)


@torch.no_grad()
def test_mean_text_pooling_ignores_padding(batch):
    images, ids, mask = batch
    model = FiberModel(micro_config().replace(text_pooling="mean")).eval()
    set_fusion_gates(model, 0.7)
    padded_ids = torch.cat([ids, torch.ones(2, 3, dtype=ids.dtype)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 3, dtype=mask.dtype)], dim=1)
    torch.testing.assert_close(model.encode_text(padded_ids, padded_mask), model.encode_text(ids, mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.fuse(images, padded_ids, padded_mask).cls_feats, model.fuse(images, ids, mask).cls_feats,
                               atol=1e-5, rtol=1e-5)
    first = FiberModel(micro_config()).eval()
    first.load_state_dict(model.state_dict())
    assert not torch.allclose(first.encode_text(ids, mask), model.encode_text(ids, mask))


def test_fusion_gates_start_at_the_configured_value():
    from fibervl.config import get_preset

    official = FiberModel(micro_config())
    assert all(float(p) == 0.0 for n, p in official.named_parameters() if n.endswith(".alpha"))
    opened = FiberModel(micro_config(alpha_init=1.0))
    gates = [float(p) for n, p in opened.named_parameters() if n.endswith(".alpha")]
    assert gates == [1.0] * 4
    assert get_preset("fiber-tiny").fusion.alpha_init == 1.0 and get_preset("fiber-base").fusion.alpha_init == 0.0


def test_bigram_embeddings_start_at_unit_scale_and_load_from_older_configs():
    """Bigram rows are drawn at std 1 (the model's std-0.02 init of embeddings must not shrink
    them: drawn small they do not let the fusion bind words, docs/results.md) and are saved with
    the model; no preset has them; a config saved before the field existed loads without them."""
    import dataclasses

    from fibervl.config import PRESETS, FiberConfig
    from fibervl.errors import ConfigError

    micro = micro_config()
    cfg = micro.replace(text=dataclasses.replace(micro.text, bigram_buckets=256))
    torch.manual_seed(0)
    model = FiberModel(cfg)
    rows = model.text.embeddings.bigram.weight
    assert rows.shape == (256, cfg.text.hidden_size) and 0.9 < float(rows.std()) < 1.1
    assert "text.embeddings.bigram.weight" in model.state_dict()
    assert all(make().text.bigram_buckets == 0 for make in PRESETS.values())
    assert FiberModel(micro).text.embeddings.bigram is None
    saved = cfg.to_dict()
    del saved["text"]["bigram_buckets"]
    assert FiberConfig.from_dict(saved).text.bigram_buckets == 0
    saved["text"]["bigram_buckets"] = -1
    with pytest.raises(ConfigError, match="bigram_buckets"):
        FiberConfig.from_dict(saved)


@torch.no_grad()
def test_ordered_text_pooling_tells_word_orders_apart():
    """text_pooling="ordered": the fused and the ITC text vectors read the tokens in order, so two
    texts with the same tokens in another order differ (with "mean" their pooled states from
    order-free features are equal); padding changes nothing; a text longer than max_text_len is a
    clear error."""
    from fibervl.errors import ConfigError

    torch.manual_seed(0)
    model = FiberModel(micro_config().replace(text_pooling="ordered")).eval()
    assert model.cross_modal.text_order.in_features == model.config.text.max_text_len * model.config.hidden_size
    feats = torch.randn(1, 5, model.config.hidden_size)
    swapped = feats[:, [0, 3, 2, 1, 4]]
    mask = torch.ones(1, 5, dtype=torch.long)
    order = model.cross_modal.text_order
    assert not torch.allclose(model._pool_text(feats, mask, order), model._pool_text(swapped, mask, order))
    padded = torch.cat([feats, torch.randn(1, 3, feats.shape[-1])], dim=1)
    torch.testing.assert_close(model._pool_text(padded, torch.cat([mask, torch.zeros(1, 3, dtype=torch.long)], dim=1), order),
                               model._pool_text(feats, mask, order))
    too_long = torch.randn(1, model.config.text.max_text_len + 1, feats.shape[-1])
    with pytest.raises(ValueError, match="max_text_len"):
        model._pool_text(too_long, torch.ones(too_long.shape[:2], dtype=torch.long), order)
    images, ids = torch.randn(2, 3, 64, 64), torch.tensor([[0, 5, 6, 7, 2], [0, 7, 6, 5, 2]])
    mask = torch.ones_like(ids)
    assert model.fuse(images, ids, mask).cls_feats.shape == (2, 2 * model.config.hidden_size)
    assert model.encode_text(ids, mask).shape == (2, model.config.hidden_size)
    with pytest.raises(ConfigError, match="text_pooling"):
        micro_config().replace(text_pooling="sum")


@torch.no_grad()
def test_max_image_pooling_keeps_a_small_bright_region(batch):
    """image_pooling="max": one token's feature survives pooling (a mean over N tokens divides it by N);
    both the dual-encoder embedding and the fused cls features use it; configs saved before the
    option existed load as "mean"."""
    from fibervl.config import FiberConfig, get_preset
    from fibervl.errors import ConfigError

    images, ids, mask = batch
    mean_model = FiberModel(micro_config()).eval()
    max_model = FiberModel(micro_config().replace(image_pooling="max")).eval()
    max_model.load_state_dict(mean_model.state_dict())
    tokens = max_model.vision(images)[-1].flatten(1, 2)
    tokens = max_model.vision.norm(tokens)
    cm = max_model.cross_modal
    expected = cm.itc_image_pooler(cm.itc_image_transform(tokens).amax(dim=1))
    torch.testing.assert_close(max_model.encode_image(images), expected / expected.norm(dim=-1, keepdim=True))
    assert not torch.allclose(mean_model.encode_image(images), max_model.encode_image(images))
    assert not torch.allclose(mean_model.fuse(images, ids, mask).cls_feats, max_model.fuse(images, ids, mask).cls_feats)

    saved = micro_config().to_dict()
    del saved["image_pooling"]
    assert FiberConfig.from_dict(saved).image_pooling == "mean"
    with pytest.raises(ConfigError, match="image_pooling"):
        micro_config().replace(image_pooling="attention")
    assert get_preset("fiber-tiny").image_pooling == "max" and get_preset("fiber-base").image_pooling == "mean"


@pytest.mark.parametrize("num_fused", [0, 2, 3, 4])  # no fusion; from the top stage, mid stage 2, stage 2's start
def test_unfused_prefixes_give_the_same_outputs(batch, num_fused):
    """Every mode started from :meth:`image_prefix` / :meth:`text_prefix` equals the mode run
    from the inputs, values and gradients alike; a prefix indexed per pair (how ITM and
    re-ranking reuse one image for several texts) equals the pass over the repeated inputs."""
    images, ids, mask = batch
    cfg = micro_config()
    cfg = cfg.replace(fusion=cfg.fusion.__class__(num_layers=num_fused), text=cfg.text.__class__(
        **{**cfg.text.__dict__, "num_layers": 4}))
    model = FiberModel(cfg)
    set_fusion_gates(model, 0.5)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    direct = model.fuse(images, ids, mask)
    g_direct = grads(direct.cls_feats.square().sum() + model.encode_image(images).sum() + model.encode_text(ids, mask).sum())
    image_prefix, text_prefix = model.image_prefix(images), model.text_prefix(ids, mask)
    shared = model.fuse(None, ids, mask, image_prefix=image_prefix, text_prefix=text_prefix)
    g_shared = grads(shared.cls_feats.square().sum() + model.encode_image(image_prefix=image_prefix).sum()
                     + model.encode_text(ids, mask, text_prefix=text_prefix).sum())
    torch.testing.assert_close(shared.cls_feats, direct.cls_feats, rtol=0, atol=0)
    torch.testing.assert_close(shared.text_feats, direct.text_feats, rtol=0, atol=0)
    assert g_shared.keys() == g_direct.keys()
    largest = max(g.abs().max().item() for g in g_direct.values())
    for name in g_direct:  # the same sums in another order: float rounding only
        torch.testing.assert_close(g_shared[name], g_direct[name], rtol=1e-4, atol=1e-6 * largest, msg=name)
    # Stages inside the prefix are not kept; the fused ones are.
    assert shared.image_stages[0] is None
    torch.testing.assert_close(shared.image_stages[-1], direct.image_stages[-1], rtol=0, atol=0)

    pairs = torch.tensor([[0, 1], [1, 0], [1, 1], [0, 0]])
    with torch.no_grad():
        indexed = model.fuse(None, ids[pairs[:, 1]], mask[pairs[:, 1]], image_prefix=image_prefix[pairs[:, 0]])
        repeated = model.fuse(images[pairs[:, 0]], ids[pairs[:, 1]], mask[pairs[:, 1]])
    torch.testing.assert_close(indexed.cls_feats, repeated.cls_feats, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_fused", [2, 3, 4])  # from the top stage, mid stage 2, stage 2's start
def test_freeze_prefix_trains_exactly_what_lies_above_the_first_fused_block(batch, num_fused):
    """After :meth:`freeze_prefix` a fused loss gives gradients to every fused block, pooler and
    head, and to nothing that :meth:`image_prefix` / :meth:`text_prefix` run; the outputs and
    the gradients of what still trains are those of the unfrozen model."""
    images, ids, mask = batch
    cfg = micro_config()
    cfg = cfg.replace(fusion=cfg.fusion.__class__(num_layers=num_fused), text=cfg.text.__class__(
        **{**cfg.text.__dict__, "num_layers": 4}))
    torch.manual_seed(0)
    model = FiberModel(cfg)
    set_fusion_gates(model, 0.5)
    loss = model.fuse(images, ids, mask).cls_feats.square().sum()
    loss.backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    # What lies above the prefix: the weights a loss reaches from detached prefixes.
    detached = model.fuse(None, ids, mask, image_prefix=model.image_prefix(images).detach(),
                          text_prefix=model.text_prefix(ids, mask).detach())
    detached.cls_feats.square().sum().backward()
    above = {n for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    frozen = model.freeze_prefix()
    assert frozen == sum(p.numel() for n, p in model.named_parameters() if n in set(full) - above) > 0
    frozen_loss = model.fuse(images, ids, mask).cls_feats.square().sum()
    frozen_loss.backward()
    torch.testing.assert_close(frozen_loss, loss, rtol=1e-6, atol=0)  # kernels may differ without autograd
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained == above
    for name in trained:
        torch.testing.assert_close(model.get_parameter(name).grad, full[name], rtol=1e-5, atol=1e-7, msg=name)
    for name in set(full) - above:
        assert not model.get_parameter(name).requires_grad, name
    assert any(n.startswith("vision.patch_embed") for n in set(full) - above)


def test_freeze_prefix_through_the_model_spec(tmp_path):
    """``ModelSpec(freeze_prefix=True)`` freezes the task model it builds; a family without
    fused prefixes says so instead of training everything."""
    from fibervl.experiment import ModelSpec
    from fibervl.modeling.albef import AlbefModel
    from fibervl.testing.configs import albef_micro_config

    FiberModel(micro_config()).save_pretrained(tmp_path / "fiber")
    model = ModelSpec(init=str(tmp_path / "fiber"), freeze_prefix=True).build(micro_config().text)
    assert not model.vision.patch_embed.proj.weight.requires_grad
    assert all(p.requires_grad for p in model.heads.parameters())
    AlbefModel(albef_micro_config()).save_pretrained(tmp_path / "albef")
    with pytest.raises(ValueError, match="freeze_prefix: AlbefModel has no unfused prefix"):
        ModelSpec(init=str(tmp_path / "albef"), freeze_prefix=True).build(albef_micro_config().text)

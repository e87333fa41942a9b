"""optimize_for_inference: the same outputs as the eager model, bf16 weights, and a model that
refuses to be trained afterwards."""

from __future__ import annotations

import pytest
import torch

from fibervl.modeling import inference
from fibervl.modeling.fiber import FiberModel
from fibervl.modeling.inference import optimize_for_inference
from fibervl.testing.models import set_fusion_gates


def fused_model(config) -> FiberModel:
    return set_fusion_gates(FiberModel(config).eval(), 0.5)  # fusion active, as after training


def copy_of(model: FiberModel) -> FiberModel:
    twin = FiberModel(model.config).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_fuse_matches_the_eager_model(micro, batch, dtype):
    images, ids, mask = batch
    eager = fused_model(micro)
    with torch.no_grad():
        ref = eager.fuse(images, ids, mask)
        ref16 = copy_of(eager).to(dtype).fuse(images.to(dtype), ids, mask)
    fast = optimize_for_inference(copy_of(eager), dtype=dtype, methods=("fuse",))
    out = fast.fuse(images, ids, mask)  # fp32 images: cast to the model's dtype
    assert out.cls_feats.dtype == dtype
    if dtype == torch.float32:
        for name in ("text_feats", "image_feats", "cls_feats", "text_hidden"):
            torch.testing.assert_close(getattr(out, name), getattr(ref, name), rtol=0, atol=1e-5)
    else:
        # Compiled bf16 fuses and reorders rounding steps: close to eager bf16, and as close to
        # fp32 as eager bf16 is (the forward benchmark's 2e-2).
        assert relative(out.cls_feats, ref16.cls_feats) < 2e-2
        assert relative(out.cls_feats, ref.cls_feats) < 2e-2
    # A second call at the same shapes re-uses the compiled graph and gives the same result.
    torch.testing.assert_close(fast.fuse(images, ids, mask).cls_feats, out.cls_feats, rtol=0, atol=0)


def test_bf16_weights_without_compiling(micro, batch):
    images, ids, mask = batch
    eager = fused_model(micro)
    with torch.no_grad():
        ref_fused = eager.fuse(images, ids, mask).cls_feats
        ref_image, ref_text = eager.encode_image(images), eager.encode_text(ids, mask)
    fast = optimize_for_inference(copy_of(eager), dtype=torch.bfloat16, compile=False)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in fast.parameters())
    fused = fast.fuse(images, ids, mask).cls_feats
    assert fused.dtype == torch.bfloat16 and not fused.requires_grad
    assert relative(fused, ref_fused) < 2e-2
    assert relative(fast.encode_image(images), ref_image) < 2e-2
    assert relative(fast.encode_text(ids, mask), ref_text) < 2e-2
    # Keyword tensors are cast too (a cached image prefix computed in fp32).
    prefix = eager.image_prefix(images).detach()
    assert relative(fast.fuse(None, ids, mask, image_prefix=prefix).cls_feats, ref_fused) < 2e-2


def test_an_optimised_model_refuses_training(micro, batch):
    images, ids, mask = batch
    model = optimize_for_inference(fused_model(micro), compile=False)
    model.train()
    with pytest.raises(RuntimeError, match="cannot be trained"):
        model.fuse(images, ids, mask)


def test_bad_arguments_are_clear_errors(micro, monkeypatch):
    with pytest.raises(ValueError, match="no method 'predict'"):
        optimize_for_inference(fused_model(micro), compile=False, methods=("predict",))
    with pytest.raises(ValueError, match="floating-point"):
        optimize_for_inference(fused_model(micro), dtype=torch.int8, compile=False)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(inference.shutil, "which", lambda name: None)
    untouched = fused_model(micro).train()
    with pytest.raises(RuntimeError, match="C\\+\\+ compiler.*compile=False"):
        optimize_for_inference(untouched, dtype=torch.bfloat16)
    # A refused call leaves the model as it was.
    assert untouched.training and "fuse" not in vars(untouched)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in untouched.parameters())

"""Parity of the fibervl DyHead grounding head with the official FIBER code (Fixture B).

Official weights are rebuilt from the fixture rule, converted, loaded strictly, and the head is run
exactly as ``model.rpn.head(list(fpn), language_dict_features, embedded, None)``. The fixture
directory comes from ``FIBERVL_OFFICIAL_FIXTURES``; if it is missing the test fails (no skip).
"""

import pytest
import torch

from fibervl.convert.official_fine_head import convert_official_fine_head
from fibervl.modeling.detection.fpn import FPN
from fibervl.modeling.detection.head import GroundingHead
from fibervl.testing.official_fixtures import fixture_dir, load_fixture, official_state_dict

ATOL = 1e-4


@pytest.fixture(scope="module")
def parity_run():
    directory = fixture_dir()  # raises FileNotFoundError -> test error, not skip
    tensors, _ = load_fixture("fine", directory)
    converted, dropped = convert_official_fine_head(official_state_dict("fine", directory))
    head = GroundingHead(channels=256, text_dim=768, num_blocks=6, num_levels=5).eval()
    fpn = FPN((256, 512, 1024), 256).eval()
    head.load_state_dict({k[len("head."):]: v for k, v in converted.items() if k.startswith("head.")}, strict=True)
    fpn.load_state_dict({k[len("fpn."):]: v for k, v in converted.items() if k.startswith("fpn.")}, strict=True)
    feats = [tensors[f"fpn.p{i}"] for i in range(3, 8)]
    with torch.no_grad():
        out = head(feats, tensors["lang.embedded"])
    return tensors, out, dropped


def test_dropped_keys_are_only_cls_logits(parity_run):
    _, _, dropped = parity_run
    assert sorted(d.split(":")[0] for d in dropped) == ["rpn.head.cls_logits.bias", "rpn.head.cls_logits.weight"]


def test_token_projection(parity_run):
    tensors, out, _ = parity_run
    torch.testing.assert_close(out.proj_tokens, tensors["dyhead.proj_tokens"], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.proj_tokens_bias, tensors["dyhead.proj_tokens_bias"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("level", range(5))
def test_level_outputs(parity_run, level):
    tensors, out, _ = parity_run
    ref_logits = tensors[f"dyhead.dot_product_logits.l{level}"]
    n_tok = ref_logits.shape[-1]
    torch.testing.assert_close(out.dot_product_logits[level][..., :n_tok], ref_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.bbox_reg[level], tensors[f"dyhead.bbox_reg.l{level}"], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.centerness[level], tensors[f"dyhead.centerness.l{level}"], atol=ATOL, rtol=0)
    if level >= 2:
        torch.testing.assert_close(out.tower[level], tensors[f"dyhead.tower_out.l{level}"], atol=ATOL, rtol=0)


def test_padding_token_columns_identical(parity_run):
    # All padding tokens have zero embeddings, so their logits coincide at every location.
    tensors, out, _ = parity_run
    mask = tensors["lang.masks"][0].bool()
    pad_cols = out.dot_product_logits[0][0][:, ~mask]
    assert torch.equal(pad_cols, pad_cols[:, :1].expand_as(pad_cols))


def test_detector_embedding_rule_matches_fixture():
    # GroundingDetector builds the head's text input as hidden * mask, as the official language
    # backbone does for language_dict_features["embedded"].
    tensors, _ = load_fixture("fine", fixture_dir())
    embedded = tensors["lang.hidden"] * tensors["lang.masks"][..., None].float()
    assert torch.equal(embedded, tensors["lang.embedded"])

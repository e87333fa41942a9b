import math

import pytest
import torch

from fibervl.modeling.detection import (
    AnchorGenerator,
    GroundingDetector,
    GroundingPostProcessor,
    GroundingTarget,
    exclusive_class_scores,
    positive_map_from_label_tokens,
    token_scores_to_class_scores,
)


def _sig(x):
    return 1 / (1 + math.exp(-x))


def _case():
    anchors = AnchorGenerator(strides=(8,), sizes=(32,)).grid_anchors([(4, 4)])
    logits = torch.full((1, 16, 4), -10.0)
    logits[0, 5, 0:2] = 3.0  # class A (tokens 0, 1) at location 5
    logits[0, 6, 0:2] = 2.0  # class A at location 6 (overlaps 5 with legacy IoU 0.667)
    logits[0, 6, 2] = 1.0  # class B (token 2) at location 6
    logits[0, 15, 0:2] = -2.9  # class A barely above 0.05
    logits[0, 0, 0:2] = -3.0  # class A below 0.05 ...
    ctr = torch.zeros(1, 1, 4, 4)
    ctr[0, 0, 0, 0] = 10.0  # ... even with a high centerness (filter is before centerness)
    reg = torch.zeros(1, 4, 4, 4)
    pm, labels = positive_map_from_label_tokens({1: [0, 1], 2: [2]}, 4)
    return reg, ctr, logits, anchors, pm, labels


def test_postprocess_hand_case():
    reg, ctr, logits, anchors, pm, labels = _case()
    det = GroundingPostProcessor()([reg], [ctr], [logits], anchors, [(100, 100)], pm, labels)[0]
    s5 = math.sqrt(_sig(3.0) * 0.5)
    s6b = math.sqrt(_sig(1.0) * 0.5)
    s15 = math.sqrt(_sig(-2.9) * 0.5)
    assert det.labels.tolist() == [1, 2, 1]
    torch.testing.assert_close(det.scores, torch.tensor([s5, s6b, s15]))
    # zero deltas decode to the anchors, clipped at 0 (legacy: max index 99)
    torch.testing.assert_close(
        det.boxes, torch.tensor([[0.0, 0.0, 27.0, 27.0], [4.0, 0.0, 35.0, 27.0], [12.0, 12.0, 43.0, 43.0]])
    )


def test_postprocess_limits_and_clipping():
    reg, ctr, logits, anchors, pm, labels = _case()
    det = GroundingPostProcessor(detections_per_img=2)([reg], [ctr], [logits], anchors, [(100, 100)], pm, labels)[0]
    assert det.labels.tolist() == [1, 2]
    det = GroundingPostProcessor(pre_nms_top_n=1)([reg], [ctr], [logits], anchors, [(100, 100)], pm, labels)[0]
    assert det.labels.tolist() == [1] and det.scores.numel() == 1
    det = GroundingPostProcessor()([reg], [ctr], [logits], anchors, [(20, 30)], pm, labels)[0]
    assert det.boxes[:, 0::2].max() <= 29 and det.boxes[:, 1::2].max() <= 19
    # default labels are 1..K
    det = GroundingPostProcessor()([reg], [ctr], [logits], anchors, [(100, 100)], pm)[0]
    assert det.labels.tolist() == [1, 2, 1]


def test_class_scores_mean_over_tokens_and_errors():
    probs = torch.tensor([[0.2, 0.4, 0.9, 0.0]])
    pm = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0]])
    torch.testing.assert_close(token_scores_to_class_scores(probs, pm), torch.tensor([[0.3, 0.9]]))
    with pytest.raises(ValueError, match="select no token"):
        token_scores_to_class_scores(probs, torch.tensor([[0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="no tokens"):
        positive_map_from_label_tokens({1: []}, 4)
    reg, ctr, logits, anchors, pm, labels = _case()
    with pytest.raises(ValueError, match="positive_map must be"):
        GroundingPostProcessor()([reg], [ctr], [logits], anchors, [(100, 100)], pm[:, :3], labels)


def test_exclusive_class_scores_rank_a_class_where_it_beats_the_others():
    """A class that fires at 0.45 on every box (an untrained name) scores higher on the box no
    other class claims than on the box another class is sure of; independent scores tie there."""
    probs = torch.tensor([[0.90, 0.45], [0.05, 0.45]])  # box 0: class 0 sure; box 1: nothing sure
    scores = exclusive_class_scores(probs)
    assert scores[1, 1] > scores[0, 1]
    # within a box the order of the classes is kept, the best class keeps at most its probability,
    # and the shares add up to the best probability
    assert scores[0].argmax() == 0 and scores[1].argmax() == 1
    assert (scores.amax(-1) <= probs.amax(-1)).all()
    torch.testing.assert_close(scores.sum(-1), probs.amax(-1))
    one = torch.tensor([[0.3], [0.8]])
    torch.testing.assert_close(exclusive_class_scores(one), one)  # one named class: unchanged


def test_postprocess_exclusive_scores_lower_the_losing_class():
    reg, ctr, logits, anchors, pm, labels = _case()
    indep = GroundingPostProcessor()([reg], [ctr], [logits], anchors, [(100, 100)], pm, labels)[0]
    excl = GroundingPostProcessor(class_scores="exclusive")([reg], [ctr], [logits], anchors, [(100, 100)], pm, labels)[0]
    # location 6: class A (logit 2) beats class B (logit 1), so B's detection there falls
    b_indep = indep.scores[indep.labels == 2].max()
    b_excl = excl.scores[excl.labels == 2].max()
    assert b_excl < b_indep
    # location 5's class A: nearly all of its probability is A's, so its score hardly moves
    assert abs(float(excl.scores[0] - indep.scores[0])) < 1e-3
    with pytest.raises(ValueError, match="class_scores must be one of"):
        GroundingPostProcessor(class_scores="softmax")


def _tiny():
    torch.manual_seed(0)
    det = GroundingDetector(in_channels=(16, 32, 48), channels=32, text_dim=24, num_blocks=2)
    feats = [torch.randn(2, 16, 16, 16), torch.randn(2, 32, 8, 8), torch.randn(2, 48, 4, 4)]
    text = torch.randn(2, 6, 24)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    pm = torch.zeros(1, 6)
    pm[0, 1:3] = 1
    targets = [
        GroundingTarget(torch.tensor([[10.0, 20.0, 80.0, 100.0]]), pm),
        GroundingTarget(torch.tensor([[30.0, 30.0, 120.0, 90.0]]), pm),
    ]
    return det, feats, text, mask, targets


@pytest.mark.parametrize("autocast", [False, True])
def test_tiny_detector_trains_fp32_and_bf16(autocast):
    det, feats, text, mask, targets = _tiny()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = det(feats, text, mask)
        losses = det.loss(out, targets, mask)
    assert [p.shape[-2:] for p in out.pyramid] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert [logits.shape for logits in out.head.dot_product_logits] == [(2, n, 6) for n in (256, 64, 16, 4, 1)]
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    sum(losses.values()).backward()
    block = det.head.tower.blocks[0]
    for p in (block.conv_same.conv.weight, block.conv_from_coarser.conv.weight, block.offset.weight,
              det.head.token_proj.weight, det.fpn.inner[0].weight, det.head.bias0):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_detector_without_tower_reads_the_fpn_and_trains():
    """``num_blocks=0`` (the tiny preset): no DyHead parameters, the predictors see the FPN levels
    themselves, and every remaining part gets a gradient."""
    torch.manual_seed(0)
    det = GroundingDetector(in_channels=(16, 32, 48), channels=32, text_dim=24, num_blocks=0)
    _, feats, text, mask, targets = _tiny()
    assert not any(".tower." in n for n, _ in det.named_parameters())
    out = det(feats, text, mask)
    assert all(t is p for t, p in zip(out.head.tower, out.pyramid))
    losses = det.loss(out, targets, mask)
    sum(losses.values()).backward()
    for p in (det.head.token_proj.weight, det.head.bbox_pred.weight, det.head.centerness.weight, det.fpn.inner[0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="num_blocks must be >= 0"):
        GroundingDetector(in_channels=(16, 32, 48), channels=32, text_dim=24, num_blocks=-1)


def test_tiny_detector_overfits_a_box():
    det, feats, text, mask, targets = _tiny()
    opt = torch.optim.AdamW(det.parameters(), lr=1e-3)
    first = None
    for _ in range(3):
        losses = det.loss(det(feats, text, mask), targets, mask)
        total = sum(losses.values())
        first = total.item() if first is None else first
        opt.zero_grad()
        total.backward()
        opt.step()
    assert total.item() < first
    out = det(feats, text, mask)
    dets = det.predict(out, [(128, 128), (128, 128)], torch.tensor([[0, 1, 1, 0, 0, 0]]))
    assert len(dets) == 2 and all(d.boxes.shape[1] == 4 for d in dets)


def test_detector_padding_tokens_do_not_change_real_logits():
    det, feats, text, mask, _ = _tiny()
    det.eval()
    with torch.no_grad():
        a = det(feats, text, mask).head.dot_product_logits[0]
        text2 = text.clone()
        text2[1, 4:] = 123.0  # padded positions are masked out before the head
        b = det(feats, text2, mask).head.dot_product_logits[0]
    torch.testing.assert_close(a, b)

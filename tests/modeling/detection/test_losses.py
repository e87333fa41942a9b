import math

import pytest
import torch

from fibervl.modeling.detection.anchors import AnchorGenerator
from fibervl.modeling.detection.atss import atss_assign
from fibervl.modeling.detection.box_coder import BoxCoder
from fibervl.modeling.detection.losses import (
    GroundingLoss,
    GroundingTarget,
    centerness_targets,
    giou_loss,
    token_region_contrastive_loss,
    token_sigmoid_focal_loss,
)


def _focal(x, t, alpha=0.25, gamma=2.0):
    p = 1 / (1 + math.exp(-x))
    if t == 1:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def test_focal_loss_hand_computation_and_mask():
    logits = torch.tensor([[[0.5, -1.0, 2.0], [3.0, 0.0, -2.0]]])
    targets = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]])
    expected = sum(_focal(float(x), int(t)) for x, t in zip(logits.flatten(), targets.flatten()))
    torch.testing.assert_close(token_sigmoid_focal_loss(logits, targets), torch.tensor(expected))
    mask = torch.tensor([[1, 0, 1]])
    expected_masked = sum(
        _focal(float(logits[0, a, j]), int(targets[0, a, j])) for a in range(2) for j in (0, 2)
    )
    torch.testing.assert_close(token_sigmoid_focal_loss(logits, targets, mask), torch.tensor(expected_masked))
    with pytest.raises(ValueError, match="text_mask"):
        token_sigmoid_focal_loss(logits, targets, torch.ones(1, 2))


def test_giou_loss_known_cases():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    target = torch.tensor([[0.0, 0.0, 2.0, 2.0], [2.0, 0.0, 3.0, 1.0], [1.0, 0.0, 3.0, 2.0]])
    # identical -> 0; disjoint: GIoU = -1/3 -> 4/3; half overlap: IoU 1/3, enclosure = union -> 2/3
    per = [giou_loss(pred[i : i + 1], target[i : i + 1]).item() for i in range(3)]
    assert per == pytest.approx([0.0, 4 / 3, 2 / 3], abs=1e-6)
    w = torch.tensor([0.5, 2.0, 1.0])
    assert giou_loss(pred, target, w).item() == pytest.approx(0.5 * 0 + 2 * 4 / 3 + 2 / 3, abs=1e-6)
    # a predicted box with x2 < x1 is collapsed to zero width, not flipped
    assert giou_loss(torch.tensor([[2.0, 0.0, 1.0, 2.0]]), torch.tensor([[0.0, 0.0, 2.0, 2.0]])).item() == pytest.approx(1.0, abs=1e-6)


def test_centerness_targets_known_value():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])  # centre (5, 5)
    gt = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # l = r = 5, t = 5, b = 15
    torch.testing.assert_close(centerness_targets(gt, anchors), torch.tensor([math.sqrt(1 / 3)]))


def _setup(seed=0):
    gen = torch.Generator().manual_seed(seed)
    anchor_gen = AnchorGenerator(strides=(8, 16), sizes=(32, 64))
    anchors = anchor_gen.grid_anchors([(6, 6), (3, 3)])
    batch, tokens = 2, 5
    bbox_reg = [0.1 * torch.randn(batch, 4, 6, 6, generator=gen), 0.1 * torch.randn(batch, 4, 3, 3, generator=gen)]
    ctr = [torch.randn(batch, 1, 6, 6, generator=gen), torch.randn(batch, 1, 3, 3, generator=gen)]
    logits = [torch.randn(batch, 36, tokens, generator=gen), torch.randn(batch, 9, tokens, generator=gen)]
    targets = [
        GroundingTarget(torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 47.0, 47.0]]),
                        torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.5, 0.0]])),
        GroundingTarget(torch.tensor([[10.0, 10.0, 45.0, 30.0]]), torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0]])),
    ]
    return bbox_reg, ctr, logits, anchors, targets


def _reference_losses(bbox_reg, ctr, logits, anchors, targets, text_mask):
    """Straightforward per-anchor recomputation of the official formulas."""
    coder = BoxCoder()
    all_anchors = torch.cat(anchors)
    reg = torch.cat([r.permute(0, 2, 3, 1).reshape(r.shape[0], -1, 4) for r in bbox_reg], 1)
    cen = torch.cat([c.permute(0, 2, 3, 1).reshape(c.shape[0], -1) for c in ctr], 1)
    log = torch.cat(logits, 1)
    token_sum, giou_terms, bce_sum, num_pos = 0.0, [], 0.0, 0
    for b, tgt in enumerate(targets):
        matched, _ = atss_assign(anchors, tgt.boxes)
        for a in range(all_anchors.shape[0]):
            m = int(matched[a])
            if m >= 0:
                tok = (tgt.positive_map[m] != 0).float()
            else:
                tok = torch.zeros(log.shape[-1])
                tok[-1] = 1.0
            for j in range(log.shape[-1]):
                if text_mask[b, j]:
                    token_sum += _focal(float(log[b, a, j]), int(tok[j]))
            if m >= 0:
                num_pos += 1
                anc = all_anchors[a : a + 1]
                gt = coder.decode(coder.encode(tgt.boxes[m : m + 1], anc), anc)
                ct = centerness_targets(gt, anc)[0]
                pred = coder.decode(reg[b, a : a + 1], anc)
                giou_terms.append((ct, giou_loss(pred, gt)))
                p = torch.sigmoid(cen[b, a])
                bce_sum += float(-(ct * torch.log(p) + (1 - ct) * torch.log(1 - p)))
    ct_sum = sum(float(c) for c, _ in giou_terms)
    reg_loss = 2.0 * sum(float(c) * float(g) for c, g in giou_terms) / ct_sum
    return {
        "loss_reg": reg_loss,
        "loss_centerness": bce_sum / max(num_pos, 1),
        "loss_dot_product_token": token_sum / max(num_pos, 1),
    }, num_pos


@pytest.mark.parametrize("last_token_on", [False, True])
def test_grounding_loss_matches_reference(last_token_on):
    bbox_reg, ctr, logits, anchors, targets = _setup()
    text_mask = torch.tensor([[1, 1, 1, 1, int(last_token_on)], [1, 1, 1, 1, int(last_token_on)]])
    losses = GroundingLoss()(bbox_reg, ctr, logits, anchors, targets, text_mask)
    ref, num_pos = _reference_losses(bbox_reg, ctr, logits, anchors, targets, text_mask)
    assert num_pos > 0
    for k, v in ref.items():
        assert losses[k].item() == pytest.approx(v, rel=1e-4), k


def test_grounding_loss_no_boxes_and_gradients():
    bbox_reg, ctr, logits, anchors, _ = _setup(1)
    for t in bbox_reg + ctr + logits:
        t.requires_grad_(True)
    empty = [GroundingTarget(torch.zeros(0, 4), torch.zeros(0, 5)) for _ in range(2)]
    losses = GroundingLoss()(bbox_reg, ctr, logits, anchors, empty, torch.ones(2, 5))
    assert losses["loss_reg"].item() == 0 and losses["loss_centerness"].item() == 0
    assert losses["loss_dot_product_token"].item() > 0
    sum(losses.values()).backward()
    assert logits[0].grad.abs().sum() > 0


def test_grounding_loss_bad_targets():
    bbox_reg, ctr, logits, anchors, targets = _setup()
    bad = [GroundingTarget(targets[0].boxes, torch.zeros(2, 4)), targets[1]]
    with pytest.raises(ValueError, match="positive_map must be"):
        GroundingLoss()(bbox_reg, ctr, logits, anchors, bad, torch.ones(2, 5))
    neg = [targets[0], GroundingTarget(torch.tensor([[30.0, 0.0, 10.0, 5.0]]), torch.zeros(1, 5))]
    with pytest.raises(ValueError, match=r"targets\[1\]\.boxes\[0\] .* negative width"):
        GroundingLoss()(bbox_reg, ctr, logits, anchors, neg, torch.ones(2, 5))
    nan = [GroundingTarget(torch.tensor([[0.0, 0.0, float("nan"), 5.0]]), torch.zeros(1, 5)), targets[1]]
    with pytest.raises(ValueError, match=r"targets\[0\]\.boxes\[0\] .* non-finite"):
        GroundingLoss()(bbox_reg, ctr, logits, anchors, nan, torch.ones(2, 5))


def test_contrastive_alignment_hand_computation():
    # 3 anchors x 4 tokens; token 3 is padding. Anchor 0 belongs to a box whose phrase is tokens
    # {0, 1}, anchor 1 to a box whose phrase is token {2}, anchor 2 is background.
    logits = torch.tensor([[2.0, 1.0, 0.0, 9.0], [0.5, -1.0, 3.0, 9.0], [1.0, 1.0, 1.0, 9.0]])
    positive = torch.tensor([[1, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    mask = torch.tensor([1, 1, 1, 0])
    a2t, t2a = token_region_contrastive_loss(logits, positive, mask)

    def nll(pos, row):  # -log(sum exp(pos) / sum exp(row))
        return math.log(sum(math.exp(v) for v in row)) - math.log(sum(math.exp(v) for v in pos))

    # the padding column never enters, neither as a positive nor in the normaliser
    assert a2t.tolist() == pytest.approx([nll([2.0, 1.0], [2.0, 1.0, 0.0]), nll([3.0], [0.5, -1.0, 3.0])], rel=1e-5)
    assert t2a.tolist() == pytest.approx([nll([2.0], [2.0, 0.5, 1.0]), nll([1.0], [1.0, -1.0, 1.0]),
                                          nll([3.0], [0.0, 3.0, 1.0])], rel=1e-5)
    with pytest.raises(ValueError, match="positive_tokens"):
        token_region_contrastive_loss(logits, positive[:, :3], mask)


def test_contrastive_alignment_prefers_the_named_object():
    """Two objects, two words: the loss is lower when each word scores its own object higher,
    and its gradient pushes there; the official focal loss only sees each pair on its own."""
    positive = torch.tensor([[1, 0], [0, 1]], dtype=torch.bool)
    mask = torch.ones(2)
    swapped = torch.tensor([[0.0, 2.0], [2.0, 0.0]], requires_grad=True)
    right = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    loss_swapped = sum(t.mean() for t in token_region_contrastive_loss(swapped, positive, mask))
    loss_right = sum(t.mean() for t in token_region_contrastive_loss(right, positive, mask))
    assert loss_right < loss_swapped
    loss_swapped.backward()
    assert (swapped.grad[positive] < 0).all() and (swapped.grad[~positive] > 0).all()


def test_grounding_loss_alignment_term_is_optional():
    bbox_reg, ctr, logits, anchors, targets = _setup()
    mask = torch.ones(2, 5)
    official = GroundingLoss()(bbox_reg, ctr, logits, anchors, targets, mask)
    assert set(official) == {"loss_reg", "loss_centerness", "loss_dot_product_token"}
    with_align = GroundingLoss(align_loss_weight=2.0)(bbox_reg, ctr, logits, anchors, targets, mask)
    for k, v in official.items():
        assert with_align[k].item() == v.item(), k
    # the term by hand: positive anchors of each image with their boxes' tokens
    all_logits = torch.cat(logits, 1)
    a2t, t2a = [], []
    for b, tgt in enumerate(targets):
        matched, _ = atss_assign(anchors, tgt.boxes)
        pos_tokens = torch.zeros(all_logits.shape[1], 5, dtype=torch.bool)
        pos_tokens[matched >= 0] = tgt.positive_map[matched[matched >= 0]] != 0
        a, t = token_region_contrastive_loss(all_logits[b], pos_tokens, mask[b])
        a2t.append(a)
        t2a.append(t)
    expected = 2.0 * 0.5 * (torch.cat(a2t).mean() + torch.cat(t2a).mean())
    assert with_align["loss_align"].item() == pytest.approx(expected.item(), rel=1e-6)
    empty = [GroundingTarget(torch.zeros(0, 4), torch.zeros(0, 5)) for _ in range(2)]
    assert GroundingLoss(align_loss_weight=1.0)(bbox_reg, ctr, logits, anchors, empty, mask)["loss_align"].item() == 0

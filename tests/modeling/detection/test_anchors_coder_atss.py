import math

import pytest
import torch

from fibervl.modeling.detection.anchors import AnchorGenerator
from fibervl.modeling.detection.atss import atss_assign, atss_assign_batch
from fibervl.modeling.detection.box_coder import BoxCoder


def test_anchor_generator_matches_official_cell_anchors():
    gen = AnchorGenerator()
    # official generate_anchors(stride=8, sizes=(64,), aspect_ratios=(1,)) -> [-28, -28, 35, 35]
    torch.testing.assert_close(gen.cell_anchor(0), torch.tensor([-28.0, -28.0, 35.0, 35.0]))
    torch.testing.assert_close(gen.cell_anchor(4), torch.tensor([-448.0, -448.0, 575.0, 575.0]))
    anchors = gen.grid_anchors([(2, 3), (1, 2), (1, 1), (1, 1), (1, 1)])
    assert [a.shape[0] for a in anchors] == [6, 2, 1, 1, 1]
    # row-major: index 4 is (i=1, j=1) -> shift (8, 8)
    torch.testing.assert_close(anchors[0][4], torch.tensor([-20.0, -20.0, 43.0, 43.0]))
    centres = (anchors[0][:, :2] + anchors[0][:, 2:]) / 2
    torch.testing.assert_close(centres[5], torch.tensor([2 * 8 + 3.5, 8 + 3.5]))


def test_box_coder_round_trip_and_known_values():
    coder = BoxCoder()
    anchors = torch.tensor([[0.0, 0.0, 63.0, 63.0], [10.0, 20.0, 41.0, 35.0]])
    gt = torch.tensor([[8.0, 4.0, 40.0, 100.0], [12.0, 18.0, 44.0, 36.0]])
    deltas = coder.encode(gt, anchors)
    # anchor 0: w = 64, centre 31.5; gt 0: w = 33, h = 97, centre (24, 52)
    expected0 = torch.tensor([10 * (24 - 31.5) / 64, 10 * (52 - 31.5) / 64, 5 * math.log(33 / 64), 5 * math.log(97 / 64)])
    torch.testing.assert_close(deltas[0], expected0)
    torch.testing.assert_close(coder.decode(deltas, anchors), gt, atol=1e-4, rtol=0)
    # large dw is clamped at log(1000/16) before exp
    big = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 0.0]]), anchors[:1])
    assert abs((big[0, 2] - big[0, 0] + 1).item() - 64 * 1000 / 16) < 1e-2
    with pytest.raises(ValueError, match="non-positive width"):
        coder.encode(torch.tensor([[5.0, 5.0, 2.0, 9.0]]), anchors[:1])


def _anchors_1d(centres_x, size, y=0.0):
    r = (size - 1) / 2
    return torch.tensor([[c - r, y - r, c + r, y + r] for c in centres_x])


def test_atss_hand_made_single_level():
    # 5 anchors of legacy size 11 along x; box [12, 28] x [-5, 5] centred at x = 20.
    anchors = _anchors_1d([0.0, 10.0, 20.0, 30.0, 40.0], 11.0)
    gt = torch.tensor([[12.0, -5.0, 28.0, 5.0]])
    matched, ious = atss_assign([anchors], gt, topk=3)
    # candidates: anchor 2 (IoU 121/187) and anchors 1, 3 (IoU 44/264 each);
    # mean + std = 0.327 + 0.277 = 0.604 keeps anchor 2 only.
    torch.testing.assert_close(ious[1:4, 0], torch.tensor([44 / 264, 121 / 187, 44 / 264]))
    assert matched.tolist() == [-1, -1, 0, -1, -1]


@pytest.mark.parametrize("x1, positive", [(9.98, True), (9.995, False), (10.5, False)])
def test_atss_centre_inside_rule(x1, positive):
    # Anchor 0 (centre x = 10) passes the IoU threshold (about 0.27 against mean + std 0.24 of
    # {0.27, 0, 0}); it is positive only if its centre is more than 0.01 inside the box.
    anchors = _anchors_1d([10.0, 60.0, 100.0], 21.0)
    gt = torch.tensor([[x1, -10.0, 40.0, 10.0]])
    matched, ious = atss_assign([anchors], gt, topk=3)
    assert ious[0, 0] > ious[:, 0].mean() + ious[:, 0].std()
    assert matched.tolist() == ([0, -1, -1] if positive else [-1, -1, -1])


def _brute_atss(levels, gts, ious, topk):
    anchors = torch.cat(levels)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    expected = [-1] * anchors.shape[0]
    best = [-float("inf")] * anchors.shape[0]
    for g in range(gts.shape[0]):
        gc = (gts[g, :2] + gts[g, 2:]) / 2
        d = (centres - gc).norm(dim=1)
        cand, start = [], 0
        for lvl in levels:
            idx = range(start, start + lvl.shape[0])
            cand += sorted(idx, key=lambda i: (d[i].item(), i))[:topk]
            start += lvl.shape[0]
        vals = torch.stack([ious[i, g] for i in cand])
        thr = vals.mean() + vals.std()
        for i in cand:
            c = centres[i]
            inside = min(c[0] - gts[g, 0], c[1] - gts[g, 1], gts[g, 2] - c[0], gts[g, 3] - c[1]) > 0.01
            if ious[i, g] >= thr and inside and ious[i, g] > best[i]:
                best[i], expected[i] = ious[i, g].item(), g
    return expected


@pytest.mark.parametrize(
    "gts, expected",
    [
        # anchor 4 is positive for both boxes; box 1 has the higher IoU (0.48 vs 0.30)
        ([[5.0, 3.0, 19.0, 15.0], [7.0, 9.0, 17.0, 19.0]], [-1, -1, -1, -1, 1, -1, -1, -1, -1, -1]),
        # anchor 4 positive for both; box 0 higher (0.71 vs 0.56)
        ([[8.0, 8.0, 17.0, 16.0], [9.0, 6.0, 16.0, 18.0]], [-1, -1, -1, -1, 0, -1, -1, -1, -1, -1]),
        # one positive per box on different levels
        ([[2.0, 2.0, 13.0, 17.0], [6.0, 6.0, 23.0, 21.0]], [-1, -1, -1, 0, -1, -1, -1, -1, -1, 1]),
    ],
)
def test_atss_multi_level_highest_iou_wins(gts, expected):
    l0 = torch.tensor([[x - 3.5, y - 3.5, x + 3.5, y + 3.5] for y in (4.0, 12.0, 20.0) for x in (4.0, 12.0, 20.0)])
    l1 = torch.tensor([[-3.5, -3.5, 27.5, 27.5]])
    gts = torch.tensor(gts)
    matched, ious = atss_assign([l0, l1], gts, topk=4)
    assert matched.tolist() == expected
    assert matched.tolist() == _brute_atss([l0, l1], gts, ious, 4)


def test_atss_no_boxes_and_bad_input():
    anchors = _anchors_1d([0.0, 10.0], 5.0)
    matched, ious = atss_assign([anchors], torch.zeros(0, 4))
    assert matched.tolist() == [-1, -1] and ious.shape == (2, 0)
    with pytest.raises(ValueError, match="negative width"):
        atss_assign([anchors], torch.tensor([[10.0, 0.0, 2.0, 5.0]]))


def test_atss_batch_equals_each_image_alone():
    """One pass for the batch gives each image's own assignment: boxes of one image never take
    another image's anchors, ties go to an image's lowest box index, an image without boxes is
    all background."""
    gen = AnchorGenerator(sizes=(16, 32, 64, 128, 256), strides=(8, 16, 32, 64, 128))
    anchors = gen.grid_anchors([(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)])
    g = torch.Generator().manual_seed(0)
    images = []
    for count in (3, 0, 1, 5, 2):
        corner = torch.rand(count, 2, generator=g) * 90
        images.append(torch.cat([corner, corner + 13 + torch.rand(count, 2, generator=g) * 38], dim=1))
    images.append(torch.tensor([[20.0, 20.0, 50.0, 50.0]] * 2))  # the same box twice: box 0 wins
    matched = atss_assign_batch(anchors, images)
    assert matched.shape == (len(images), sum(len(a) for a in anchors))
    for b, boxes in enumerate(images):
        assert matched[b].tolist() == atss_assign(anchors, boxes)[0].tolist(), b
    assert (matched[1] == -1).all() and (matched[-1] >= 0).any() and (matched[-1] != 1).all()
    with pytest.raises(ValueError, match=r"gt_boxes\[2\]"):
        atss_assign_batch(anchors, [images[0], images[2], torch.tensor([[10.0, 0.0, 2.0, 5.0]])])

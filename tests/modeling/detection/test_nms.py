import time

import pytest
import torch

from fibervl.modeling.detection.nms import batched_nms, nms


def test_bad_scores_raise():
    with pytest.raises(ValueError, match="scores must have shape"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)


def _brute_nms(boxes, scores, labels, thr, off):
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    keep = []
    for i in order:
        ok = True
        for j in keep:
            if labels[i] != labels[j]:
                continue
            bi, bj = boxes[i].tolist(), boxes[j].tolist()
            iw = max(min(bi[2], bj[2]) - max(bi[0], bj[0]) + off, 0.0)
            ih = max(min(bi[3], bj[3]) - max(bi[1], bj[1]) + off, 0.0)
            inter = iw * ih
            ai = (bi[2] - bi[0] + off) * (bi[3] - bi[1] + off)
            aj = (bj[2] - bj[0] + off) * (bj[3] - bj[1] + off)
            if inter / (ai + aj - inter) > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def _random_boxes(n, gen, scale=100.0):
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * scale
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * scale / 3 + 1
    return torch.cat([xy, xy + wh], 1).float()


@pytest.mark.parametrize("off", [0.0, 1.0])
@pytest.mark.parametrize("thr", [0.3, 0.6])
def test_nms_matches_brute_force(off, thr):
    gen = torch.Generator().manual_seed(0)
    boxes = _random_boxes(300, gen)
    scores = torch.rand(300, generator=gen)
    scores[10:20] = scores[5]  # ties resolved by index
    labels = torch.randint(0, 4, (300,), generator=gen)
    assert nms(boxes, scores, thr, off).tolist() == _brute_nms(boxes, scores, [0] * 300, thr, off)
    assert batched_nms(boxes, scores, labels, thr, off).tolist() == _brute_nms(boxes, scores, labels.tolist(), thr, off)


def test_nms_empty_and_speed():
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0
    gen = torch.Generator().manual_seed(1)
    boxes = _random_boxes(5000, gen, scale=800.0)
    scores = torch.rand(5000, generator=gen)
    labels = torch.randint(0, 80, (5000,), generator=gen)
    t = time.perf_counter()
    keep = batched_nms(boxes, scores, labels, 0.6, 1.0)
    elapsed = time.perf_counter() - t
    assert keep.numel() > 0 and elapsed < 2.0, elapsed

import math

import pytest
import torch
import torch.nn.functional as F

from fibervl.tasks.objectives import (
    INIT_TEMPERATURE, FeatureQueue, clamp_temperature_, itc_logits, itc_loss, itm_hard_negative_batch,
    mask_tokens, sample_hard_negatives,
)


# ----------------------------------------------------------------------------- ITC
def test_itc_identity_pairs_by_hand() -> None:
    e = torch.eye(2)
    # logits = I / 0.5 -> each row: -log(e^2 / (e^2 + e^0)) = log(1 + e^-2), both directions
    assert itc_loss(e, e, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)


def test_itc_asymmetric_by_hand() -> None:
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    txt = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    # sim = img @ txt.T = [[0.8, 0.0], [0.96, 0.8]]
    # i2t: row0 -log(e^.8/(e^.8+e^0)) = log(1+e^-.8); row1 -log(e^.8/(e^.96+e^.8)) = log(1+e^.16)
    # t2i uses sim.T: row0 log(1+e^.16); row1 log(1+e^-.8) -> same mean
    expected = (math.log(1 + math.exp(-0.8)) + math.log(1 + math.exp(0.16))) / 2
    out = itc_logits(img, txt, torch.tensor(1.0))
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(out.logits_i2t, torch.tensor([[0.8, 0.0], [0.96, 0.8]]))
    assert out.targets.tolist() == [0, 1] and out.num_global == 2


def test_itc_normalize_and_temperature_gradient() -> None:
    img = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    temp = torch.tensor(0.5, requires_grad=True)
    loss = itc_loss(img, img.clone(), temp, normalize=True)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    loss.backward()
    # d/dT log(1 + e^{-1/T}) = e^{-1/T} / (1 + e^{-1/T}) / T^2 at T = 0.5
    assert temp.grad.item() == pytest.approx(math.exp(-2) / (1 + math.exp(-2)) / 0.25, rel=1e-5)


def test_itc_with_queue_by_hand() -> None:
    q = FeatureQueue(dim=2, size=4)
    assert q.get()[0].shape == (0, 2)
    q.enqueue(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 1.0]]))
    x = torch.tensor([[1.0, 0.0]])
    # one pair plus one queued negative at similarity 0: log(1 + e^{-1}) both ways
    out = itc_logits(x, x, 1.0, queue=q)
    assert out.logits_i2t.shape == (1, 2)
    assert out.loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


def test_feature_queue_ring_buffer() -> None:
    q = FeatureQueue(dim=1, size=3)
    for start in (0, 2, 4):
        v = torch.tensor([[float(start)], [float(start + 1)]])
        q.enqueue(v, -v)
    img, txt = q.get()
    assert img.flatten().tolist() == [3.0, 4.0, 5.0]  # oldest first, last 3 kept
    assert txt.flatten().tolist() == [-3.0, -4.0, -5.0]
    assert int(q.ptr) == 0 and int(q.count) == 3
    q.enqueue(torch.arange(5.0)[:, None], torch.arange(5.0)[:, None])  # more than size at once
    assert q.get()[0].flatten().tolist() == [2.0, 3.0, 4.0]
    assert set(q.state_dict()) == {"image", "text", "ptr", "count"}  # checkpointed as buffers
    with pytest.raises(ValueError, match="expected two"):
        q.enqueue(torch.zeros(2, 2), torch.zeros(2, 2))


def test_temperature_clamp() -> None:
    t = torch.nn.Parameter(torch.tensor(INIT_TEMPERATURE))
    assert clamp_temperature_(t).item() == pytest.approx(0.07)
    with torch.no_grad():
        t.fill_(5.0)
    assert clamp_temperature_(t).item() == 1.0 and t.requires_grad
    with torch.no_grad():
        t.fill_(-1.0)
    assert clamp_temperature_(t).item() == pytest.approx(0.001)


# ----------------------------------------------------------------------------- hard negatives
def test_hard_negatives_never_positive_even_when_positive_dominates() -> None:
    g = torch.Generator().manual_seed(0)
    b, bg = 8, 16
    logits = torch.randn(b, bg, generator=g)
    pos = torch.arange(b) + 4  # e.g. rank 1 of a 2-rank run with B=8... offset 4
    logits[torch.arange(b), pos] = 1e4
    for _ in range(200):
        neg = sample_hard_negatives(logits, pos, generator=g)
        assert neg.shape == (b,) and not bool((neg == pos).any())
        assert bool(((neg >= 0) & (neg < bg)).all())


def test_hard_negatives_follow_softmax_without_positive() -> None:
    g = torch.Generator().manual_seed(1)
    row = torch.tensor([5.0, 3.0, 1.0, 0.0])  # positive = 0 (the largest)
    n = 20000
    logits = row.expand(n, 4).contiguous()
    neg = sample_hard_negatives(logits, torch.zeros(n, dtype=torch.long), generator=g)
    freq = torch.bincount(neg, minlength=4).double() / n
    p = torch.softmax(torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64), 0)
    assert freq[0] == 0.0
    assert torch.allclose(freq[1:], p, atol=0.015), (freq, p)
    assert freq[1] > freq[2] > freq[3]  # prefers high-similarity items


def test_hard_negatives_uniform_on_ties_and_nonfinite() -> None:
    g = torch.Generator().manual_seed(2)
    n = 12000
    for fill in (0.0, float("nan")):
        logits = torch.full((n, 4), fill)
        neg = sample_hard_negatives(logits, torch.full((n,), 2), generator=g)
        freq = torch.bincount(neg, minlength=4).double() / n
        assert freq[2] == 0.0
        assert torch.allclose(freq[[0, 1, 3]], torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.02)
    # -inf on every non-positive column: still a valid (uniform) negative
    logits = torch.tensor([[0.0, float("-inf"), float("-inf")]])
    assert sample_hard_negatives(logits, torch.tensor([0]), generator=g).item() in (1, 2)


def test_hard_negatives_exclude_and_errors() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.tensor([[0.0, 9.0, 0.0, 0.0]] * 50)
    exclude = torch.zeros(50, 4, dtype=torch.bool)
    exclude[:, 1] = True  # e.g. another caption of the same image
    neg = sample_hard_negatives(logits, torch.zeros(50, dtype=torch.long), generator=g, exclude=exclude)
    assert set(neg.tolist()) <= {2, 3}
    all_ex = torch.ones(1, 3, dtype=torch.bool)  # nothing left: fall back to any non-positive
    assert sample_hard_negatives(torch.zeros(1, 3), torch.tensor([1]), generator=g, exclude=all_ex).item() in (0, 2)
    with pytest.raises(ValueError, match="at least 2 columns"):
        sample_hard_negatives(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="positive must be"):
        sample_hard_negatives(torch.zeros(2, 3), torch.tensor([0, 3]))


def test_hard_negatives_reproducible_with_generator() -> None:
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(4))
    pos = torch.arange(6)
    a = sample_hard_negatives(logits, pos, generator=torch.Generator().manual_seed(9))
    b = sample_hard_negatives(logits, pos, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_hard_negatives_of_a_row_slice_are_the_whole_matrix_choices() -> None:
    """Ranks holding rows 0:3 and 3:8 of the global similarities, each with a generator seeded
    like the others', choose what one process chooses for all 8 rows (at equal or different
    slice sizes); a slice outside the matrix is an error."""
    logits = torch.randn(8, 8, generator=torch.Generator().manual_seed(5))
    pos = torch.arange(8)
    exclude = torch.zeros(8, 8, dtype=torch.bool)
    exclude[0, 7] = exclude[7, 0] = True  # pairs of one image, on different ranks
    whole = sample_hard_negatives(logits, pos, torch.Generator().manual_seed(6), exclude)
    for bounds in ((0, 4, 8), (0, 3, 8)):
        parts = [sample_hard_negatives(logits[a:b], pos[a:b], torch.Generator().manual_seed(6), exclude[a:b],
                                       row_offset=a, total_rows=8) for a, b in zip(bounds, bounds[1:])]
        assert torch.equal(torch.cat(parts), whole)
    # a rank drawing only for its own rows (the draws before the fix) chooses otherwise
    own = [sample_hard_negatives(logits[a:a + 4], pos[a:a + 4], torch.Generator().manual_seed(6), exclude[a:a + 4])
           for a in (0, 4)]
    assert not torch.equal(torch.cat(own), whole)
    with pytest.raises(ValueError, match="not inside"):
        sample_hard_negatives(logits[4:], pos[4:], row_offset=6, total_rows=8)


def test_itm_batch_layout() -> None:
    image = torch.arange(2.0)[:, None].expand(2, 3)          # local images 0, 1
    ids = torch.tensor([[10, 11], [20, 21]])
    mask = torch.ones(2, 2, dtype=torch.long)
    image_all = torch.arange(4.0)[:, None].expand(4, 3)      # global images 0..3
    ids_all = torch.tensor([[10, 11], [20, 21], [30, 31], [40, 41]])
    mask_all = torch.tensor([[1, 1], [1, 1], [1, 0], [1, 1]])
    imgs, tids, tmask, labels = itm_hard_negative_batch(image, ids, mask, image_all, ids_all, mask_all,
                                                         neg_text_idx=torch.tensor([2, 3]), neg_image_idx=torch.tensor([3, 0]))
    assert imgs[:, 0].tolist() == [0, 1, 0, 1, 3, 0]
    assert tids[:, 0].tolist() == [10, 20, 30, 40, 10, 20]
    assert tmask[2].tolist() == [1, 0]
    assert labels.tolist() == [1, 1, 0, 0, 0, 0]


# ----------------------------------------------------------------------------- MLM masking
def _batch(b: int = 64, length: int = 512):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(5, 1000, (b, length), generator=g)
    attn = torch.ones(b, length, dtype=torch.long)
    attn[::2, length // 2:] = 0  # half the rows padded to half length
    ids[attn == 0] = 1  # pad id
    special = torch.zeros(b, length, dtype=torch.bool)
    special[:, 0] = True  # <s>
    last = attn.sum(1) - 1
    special[torch.arange(b), last] = True  # </s>
    ids[:, 0] = 0
    ids[torch.arange(b), last] = 2
    return ids, attn, special


def test_mask_rates_and_never_special_or_padding() -> None:
    ids, attn, special = _batch()
    masked, labels = mask_tokens(ids, mask_token_id=3, vocab_size=1000, attention_mask=attn, special_tokens_mask=special,
                                 generator=torch.Generator().manual_seed(6), ensure_one=False)
    maskable = attn.bool() & ~special
    selected = labels != -100
    assert not bool((selected & ~maskable).any())  # never special tokens or padding
    assert torch.equal(masked[~maskable], ids[~maskable])
    assert torch.equal(labels[selected], ids[selected])  # labels hold the original ids
    assert torch.equal(masked[~selected], ids[~selected])  # unselected tokens untouched
    rate = selected.sum().item() / maskable.sum().item()
    assert abs(rate - 0.15) < 0.005, rate  # ~24k maskable tokens: std ~0.0023
    n = selected.sum().item()
    to_mask = (masked == 3) & selected
    kept = (masked == ids) & selected
    randomized = selected & ~to_mask & ~kept
    assert abs(to_mask.sum().item() / n - 0.8) < 0.015
    assert abs(randomized.sum().item() / n - 0.1) < 0.012  # random id equal to the original (~0.1 %) counts as kept
    assert abs(kept.sum().item() / n - 0.1) < 0.012
    assert bool(((masked[randomized] >= 0) & (masked[randomized] < 1000)).all())


def test_mask_ensure_one_and_empty_rows() -> None:
    ids = torch.tensor([[0, 7, 8, 9, 2], [0, 2, 1, 1, 1]])
    attn = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    special = torch.tensor([[1, 0, 0, 0, 1], [1, 1, 0, 0, 0]]).bool()
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        _, labels = mask_tokens(ids, 3, 100, attention_mask=attn, special_tokens_mask=special, prob=0.15, generator=g)
        assert (labels[0] != -100).sum() >= 1  # at least one token of a maskable row
        assert bool((labels[0, [0, 4]] == -100).all())
        assert bool((labels[1] == -100).all())  # nothing maskable in row 1
    _, labels = mask_tokens(ids, 3, 100, attention_mask=attn, special_tokens_mask=special, prob=0.0, generator=g)
    assert bool((labels == -100).all())


def test_mask_reproducible_and_errors() -> None:
    ids, attn, special = _batch(4, 32)
    a = mask_tokens(ids, 3, 1000, attention_mask=attn, generator=torch.Generator().manual_seed(1))
    b = mask_tokens(ids, 3, 1000, attention_mask=attn, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        mask_tokens(ids[0], 3, 1000)
    with pytest.raises(ValueError, match="prob"):
        mask_tokens(ids, 3, 1000, prob=1.5)


def test_itc_matches_cross_entropy_reference_random() -> None:
    g = torch.Generator().manual_seed(11)
    img = F.normalize(torch.randn(5, 7, generator=g), dim=-1)
    txt = F.normalize(torch.randn(5, 7, generator=g), dim=-1)
    logits = img @ txt.t() / 0.2
    ref = (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.t(), torch.arange(5))) / 2
    assert itc_loss(img, txt, 0.2).item() == pytest.approx(ref.item(), rel=1e-6)

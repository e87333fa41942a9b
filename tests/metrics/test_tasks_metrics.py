"""Metric code against hand-computed values: VQAv2 accuracy, recall with several captions,
re-ranking of the dual encoder's top-k."""

from __future__ import annotations

import json

import pytest
import torch

from fibervl.metrics.retrieval import retrieval_recall
from fibervl.metrics.vqa import mean_vqa_accuracy, vqa_accuracy, vqa_score, write_vqa_results
from fibervl.tasks.retrieval import (SWEEP_PREFIX, choose_itm_weight, rerank_scores, scored_once, topk_candidates,
                                     weighted)


def test_vqa_accuracy_leave_one_out():
    # k of 10 annotators: mean over 10 subsets of min(matches/3, 1).
    ten = lambda k: ["cat"] * k + ["dog"] * (10 - k)  # noqa: E731
    assert vqa_accuracy("cat", ten(0)) == 0.0
    assert vqa_accuracy("cat", ten(1)) == pytest.approx(0.3)   # 9 subsets with 1 match: 9 * 1/3 / 10
    assert vqa_accuracy("cat", ten(2)) == pytest.approx(0.6)   # (2 * 1/3 + 8 * 2/3) / 10
    assert vqa_accuracy("cat", ten(3)) == pytest.approx(0.9)   # (3 * 2/3 + 7 * 1) / 10
    assert vqa_accuracy("cat", ten(4)) == 1.0
    assert vqa_accuracy("cat", ten(10)) == 1.0


def test_vqa_accuracy_normalises_when_annotators_disagree():
    answers = ["two", "2", "2 ", "Two.", "three", "3", "3", "3", "3", "3"]
    # "two", "2", "2", "two." all normalise to "2": 4 matches.
    assert vqa_accuracy("Two", answers) == 1.0
    assert vqa_accuracy("the 2!", answers) == 1.0
    assert vqa_accuracy("dont know", ["don't know"] * 3 + ["no"] * 7) == pytest.approx(0.9)
    # Unanimous annotators: the official evaluator only strips and lower-cases.
    assert vqa_accuracy(" YES\n", ["yes"] * 10) == 1.0
    assert vqa_accuracy("yes!", ["yes"] * 10) == 0.0


def test_mean_accuracy_over_candidates_is_the_mean_of_single_accuracies():
    """The chance baseline's fast path (annotators normalised once) against hand values: a
    random pick from 4 candidates, of which "Two" and "2" match 4 annotators (1.0 each), "three"
    and "3" match 6 (1.0), on disagreeing annotators; on unanimous ones only "yes" matches."""
    answers = ["two", "2", "2 ", "Two.", "three", "3", "3", "3", "3", "3"]
    assert mean_vqa_accuracy(["Two", "2", "3", "cat"], answers) == pytest.approx(0.75)
    assert mean_vqa_accuracy(["yes", "yes!", "no"], ["yes"] * 10) == pytest.approx(1 / 3)
    assert mean_vqa_accuracy(["cat", "dog"], ["cat"] * 2 + ["dog"] * 8) == pytest.approx((0.6 + 1.0) / 2)
    with pytest.raises(ValueError, match="at least one"):
        mean_vqa_accuracy([], answers)


def test_vqa_score_and_results_file(tmp_path):
    from fibervl.data import Sample

    samples = [Sample(sample_id="1", image_id=0, text="q", answers=["red"] * 10, answer_type="other"),
               Sample(sample_id="2", image_id=0, text="q", answers=["yes"] * 2 + ["no"] * 8, answer_type="yes/no")]
    out = vqa_score({"1": "red", "2": "yes"}, samples)
    assert out["vqa_acc"] == pytest.approx(80.0) and out["vqa_acc_yes_no"] == pytest.approx(60.0)
    with pytest.raises(KeyError, match="2"):
        vqa_score({"1": "red"}, samples)
    path = write_vqa_results({"1": "red", "2": "yes"}, tmp_path / "res.json")
    assert json.loads(path.read_text()) == [{"question_id": 1, "answer": "red"}, {"question_id": 2, "answer": "yes"}]


def test_recall_with_several_captions_per_image():
    # 2 images, 4 texts: texts 0, 1 describe image 0; texts 2, 3 image 1.
    text_to_image = torch.tensor([0, 0, 1, 1])
    scores = torch.tensor([[0.1, 0.9, 0.8, 0.0],    # image 0: best text 1 (its own) -> i2t hit at 1
                           [0.5, 0.6, 0.4, 0.3]])   # image 1: own texts rank 3rd and 4th -> i2t miss at 1, hit at 5
    r = retrieval_recall(scores, text_to_image, ks=(1, 5))
    assert r["i2t_r1"] == 50.0 and r["i2t_r5"] == 100.0
    # text 0: image 1 (0.5) beats image 0 (0.1) -> miss; text 1: 0.9 > 0.6 hit; text 2: 0.8 > 0.4 miss; text 3: 0.3 > 0.0 hit
    assert r["t2i_r1"] == 50.0 and r["t2i_r5"] == 100.0
    assert r["rsum"] == pytest.approx(300.0)


def test_recall_breaks_ties_at_random_in_expectation():
    """A collapsed model (every score equal) is at chance, not at 100: the hit probability of a
    tie between the target and t rivals is 1 / (t + 1) at k = 1."""
    text_to_image = torch.arange(4)  # four images, one caption each
    r = retrieval_recall(torch.zeros(4, 4), text_to_image, ks=(1, 2, 5))
    assert r["i2t_r1"] == pytest.approx(25.0) and r["t2i_r1"] == pytest.approx(25.0)
    assert r["i2t_r2"] == pytest.approx(50.0) and r["i2t_r5"] == 100.0
    # image 0: its caption ties with one other text, one text above both -> R@1 0, R@2 1/2, R@3 1;
    # image 1 (texts 1-3) ranks its own first
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1],
                           [0.0, 1.0, 1.0, 1.0]])
    r = retrieval_recall(scores, torch.tensor([0, 1, 1, 1]), ks=(1, 2, 3))
    assert (r["i2t_r1"], r["i2t_r2"], r["i2t_r3"]) == (50.0, 75.0, 100.0)


def test_rerank_picks_the_itm_best_among_the_top_k():
    itc = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])  # one image, five texts
    itm = {(0, 0): 0.0, (0, 1): 0.5, (0, 2): 4.0, (0, 3): 100.0, (0, 4): 100.0}

    def scorer(pairs):
        return torch.tensor([itm[tuple(p.tolist())] for p in pairs])

    i2t, _ = rerank_scores(itc, scorer, k=3)
    # Top 3 by ITC: texts 0, 1, 2 with ITC + ITM = 5, 4.5, 7 -> text 2 first; texts 3 and 4 (great ITM,
    # but outside the top k) stay below every candidate in ITC order.
    assert i2t[0].argsort(descending=True).tolist() == [2, 0, 1, 3, 4]


def test_rerank_scores_only_the_candidate_pairs():
    itc = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    scored = []

    def scorer(pairs):
        scored.extend(map(tuple, pairs.tolist()))
        return torch.zeros(len(pairs))

    rerank_scores(itc, scorer, k=1)
    # i2t top-1: (0, 0), (1, 2); t2i top-1: text 0 -> image 0, text 1 -> a tie, text 2 -> image 1.
    assert len(scored) == len(set(scored)) <= 3 and {(0, 0), (1, 2)} <= set(scored)


def test_rerank_with_k_at_gallery_size_is_the_full_ensemble():
    itc = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    itm = torch.tensor([[0.0, 3.0], [0.0, 0.0]])
    i2t, t2i = rerank_scores(itc, lambda p: itm[p[:, 0], p[:, 1]], k=2)
    assert torch.allclose(i2t - i2t.min(), (itc + itm) - (itc + itm).min())
    assert t2i.argmax(0).tolist() == [0, 0]


def test_weighted_rerank_lets_itm_overrule_itc_only_as_far_as_its_weight():
    itc = torch.tensor([[0.30, 0.25, 0.10]])  # one image, three texts; ITC prefers text 0
    itm = torch.tensor([-1.0, 1.0, 5.0])  # ITM prefers text 2, then 1

    def scorer(pairs):
        return itm[pairs[:, 1]]

    order = {w: rerank_scores(itc, weighted(scorer, w), k=3)[0][0].argsort(descending=True).tolist()
             for w in (0.0, 0.03, 1.0)}
    assert order[0.0] == [0, 1, 2]  # weight 0 keeps the ITC order
    assert order[0.03] == [1, 0, 2]  # 0.25 + 0.03 > 0.30 - 0.03 > 0.10 + 0.15
    assert order[1.0] == [2, 1, 0]


def test_scored_once_runs_the_fused_passes_once_for_the_same_pairs():
    calls = []

    def scorer(pairs):
        calls.append(len(pairs))
        return pairs[:, 1].float()

    once = scored_once(scorer)
    pairs = torch.tensor([[0, 1], [0, 2]])
    assert once(pairs).tolist() == once(pairs.clone()).tolist() == [1.0, 2.0]
    assert calls == [2]
    once(torch.tensor([[0, 3]]))
    assert calls == [2, 1]


def test_choose_itm_weight_takes_the_best_mean_r1_and_the_smaller_weight_on_a_tie():
    sweep = {f"{SWEEP_PREFIX}0": 60.0, f"{SWEEP_PREFIX}0.02": 62.5, f"{SWEEP_PREFIX}0.1": 62.5,
             f"{SWEEP_PREFIX}1": 55.0, "itc_i2t_r1": 99.0}
    assert choose_itm_weight(sweep) == 0.02
    with pytest.raises(ValueError, match="itm_weight_sweep"):
        choose_itm_weight({"itc_i2t_r1": 50.0})


def test_topk_candidates_dense():
    q, g = torch.eye(3), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    scores, idx = topk_candidates(q, g, k=5)
    assert idx.shape == (3, 2) and idx[0, 0] == 1 and idx[1, 0] == 0


def test_topk_candidates_faiss_is_optional():
    g = torch.nn.functional.normalize(torch.randn(20, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    q = g[:4] + 0.01
    try:
        import faiss  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="pip install faiss-cpu"):
            topk_candidates(q, g, k=3, use_faiss=True)
        return
    dense = topk_candidates(q, g, k=3)
    fast = topk_candidates(q, g, k=3, use_faiss=True)
    assert torch.equal(dense[1], fast[1]) and torch.allclose(dense[0], fast[0], atol=1e-5)


@pytest.mark.parametrize("family", ["fiber", "albef"])
def test_itm_pair_scores_equal_one_fused_pass_per_pair(family):
    """Re-ranking computes each image's and text's unfused prefix once and re-uses it across its
    pairs (batches of 2 here, texts of different lengths): the scores are those of one fused pass
    from the inputs for each pair."""
    from fibervl.modeling.factory import create_model
    from fibervl.tasks.retrieval import itm_pair_scores
    from fibervl.testing.configs import albef_micro_config, micro_config

    torch.manual_seed(0)
    model = create_model(micro_config() if family == "fiber" else albef_micro_config(), seed=None).eval()
    images = torch.randn(3, 3, 64, 64)
    ids = torch.randint(4, 99, (4, 7))
    ids[:, 0] = 0
    ids[1, 4:] = 1
    ids[3, 3:] = 1
    mask = ids.ne(1).long()
    pairs = torch.tensor([[0, 0], [2, 1], [0, 3], [1, 1], [2, 3]])
    scores = itm_pair_scores(model, images, ids, mask, pairs, batch_size=2)
    with torch.no_grad():
        logits = model.itm_logits(model.fuse(images[pairs[:, 0]], ids[pairs[:, 1]], mask[pairs[:, 1]]).cls_feats)
    torch.testing.assert_close(scores, logits[:, 1] - logits[:, 0], rtol=1e-5, atol=1e-5)
    assert itm_pair_scores(model, images, ids, mask, pairs[:0]).shape == (0,)


@pytest.mark.parametrize("family", ["fiber", "albef"])
def test_nlvr2_logits_share_the_statement_prefix(family):
    """NLVR2 computes the statement's unfused prefix once for its two images: the logits are those
    of the two fused passes from the inputs."""
    from fibervl.modeling.factory import create_model
    from fibervl.tasks.nlvr2 import nlvr2_logits
    from fibervl.testing.configs import albef_micro_config, micro_config

    torch.manual_seed(0)
    model = create_model(micro_config() if family == "fiber" else albef_micro_config(), seed=None).eval()
    left, right = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    ids = torch.randint(4, 99, (2, 6))
    ids[1, 4:] = 1
    mask = ids.ne(1).long()
    with torch.no_grad():
        expected = model.nlvr2_logits(model.fuse(left, ids, mask).cls_feats, model.fuse(right, ids, mask).cls_feats)
        torch.testing.assert_close(nlvr2_logits(model, left, right, ids, mask), expected, rtol=1e-5, atol=1e-5)

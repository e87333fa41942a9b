"""Caption objectives beyond MLE: CIDEr-D, sampling, SCST, GOLD and the ``caption.objective`` key."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from fibervl.metrics.cider import CiderD, corpus_cider, tokenize
from fibervl.modeling.fiber import FiberModel
from fibervl.tasks.caption import CaptionSettings, CaptionTask, caption_mle_loss
from fibervl.tasks.caption_objectives import gold_loss, gold_weights, target_logprobs
from fibervl.tasks.decoding import DecodeConfig, generate, sample
from fibervl.testing.configs import micro_config
from fibervl.testing.models import set_fusion_gates

BOS, PAD, EOS, MASK = 0, 1, 2, 99
WORDS = list(range(10, 18))  # the only tokens the SCST test lets the model say (with EOS)


class WordTokenizer:
    """Token id i <-> the word ``w{i}``: enough of a tokenizer for SCST's rewards."""

    bos_token_id, pad_token_id, eos_token_id, mask_token_id = BOS, PAD, EOS, MASK

    def decode(self, ids) -> str:
        return " ".join(f"w{i}" for i in ids)


@pytest.fixture(autouse=True)
def one_thread():
    """Micro-model steps are far too small to split across threads; on a shared 2-core host the
    threads' waiting made the SCST test 14x slower (40.5 s against 2.8 s, run back to back)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(seed: int = 0) -> FiberModel:
    torch.manual_seed(seed)
    return set_fusion_gates(FiberModel(micro_config()), 0.5)


def _batch(n: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 99, (n, 7), generator=g)
    ids[:, 0], ids[:, -1] = BOS, EOS
    ids[1, 4], ids[1, 5:] = EOS, PAD  # one shorter caption
    return {"images": torch.randn(n, 3, 64, 64, generator=g), "input_ids": ids,
            "attention_mask": ids.ne(PAD).long(), "image_ids": torch.arange(n)}


# ---- CIDEr-D ------------------------------------------------------------------------------

def test_cider_d_hand_computed():
    # Two documents: "a" is in both (IDF 0), every other n-gram in one (IDF log 2).
    cider = CiderD([["a b"], ["a c"]], tokenizer=str.split)
    # Identical to its only reference: cosine 1 for 1-grams ("b"; "a" weighs 0) and 2-grams,
    # no 3- or 4-grams: 10 * (1 + 1 + 0 + 0) / 4.
    assert cider.score("a b", ["a b"]) == pytest.approx(5.0)
    # "b b" against "a b": 1-gram weights (b: 2 idf) and (a: 0, b: idf). Clipped, the dot is
    # min(2 idf, idf) * idf, the cosine idf^2 / (2 idf * idf) = 0.5; unclipped 1; no 2-gram shared.
    assert cider.score("b b", ["a b"]) == pytest.approx(10 * 0.5 / 4)
    assert CiderD([["a b"], ["a c"]], clip=False, tokenizer=str.split).score("b b", ["a b"]) == pytest.approx(10 / 4)
    # The length penalty: 2-gram counts 1 and 4 differ by 3, exp(-9 / 72) on every n.
    plain = CiderD([["a b"], ["a c"]], sigma=None, tokenizer=str.split)
    long_ref = ["a b c b c"]
    assert plain.score("a b", long_ref) > 0
    assert cider.score("a b", long_ref) == pytest.approx(plain.score("a b", long_ref) * math.exp(-9 / 72))
    # 1-grams: (b: idf) against (b: 2 idf, c: 2 idf); 2-grams: ((a b): idf) against
    # ((a b): idf, (b c): 2 idf, (c b): idf); the candidate has no 3- or 4-grams.
    assert plain.score("a b", long_ref) == pytest.approx(10 * (2 / math.sqrt(8) + 1 / math.sqrt(6)) / 4)
    # An n-gram every document has carries no weight: "a" scores 0 against "a".
    assert cider.score("a", ["a"]) == 0.0
    # Several references: the mean of the per-reference scores.
    assert cider.score("a b", ["a b", "a c"]) == pytest.approx((5.0 + cider.score("a b", ["a c"])) / 2)
    with pytest.raises(ValueError, match="at least one reference"):
        cider.score("a", [])


def test_tokenize_drops_case_and_punctuation():
    assert tokenize("A red, round circle.") == ["a", "red", "round", "circle"]
    assert tokenize("two-tone shapes; don't!") == ["two-tone", "shapes", "don't"]


def test_corpus_cider_matches_pycocoevalcap():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.cider.cider import Cider

    rng = random.Random(0)
    vocab = "a red blue circle square star two three on the left of small large".split()
    refs = {i: [" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 9))) for _ in range(rng.randint(1, 5))]
            for i in range(40)}
    cands = {i: " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 10))) for i in range(40)}
    cands[3] = refs[3][0]
    mean, scores = Cider().compute_score(refs, {k: [v] for k, v in cands.items()})
    ours, per_image = corpus_cider(cands, refs, tokenizer=str.split)
    assert ours == pytest.approx(mean, abs=1e-12)
    assert [per_image[i] for i in range(40)] == pytest.approx(list(scores), abs=1e-12)
    # Fixed document frequencies from the same references give the same scores.
    fixed = CiderD(refs.values(), tokenizer=str.split)
    assert fixed.scores([cands[i] for i in range(40)], [refs[i] for i in range(40)]) == pytest.approx(list(scores))


# ---- sampling -----------------------------------------------------------------------------

def test_sampling_follows_the_model_distribution():
    model = _model().eval()
    with torch.no_grad():
        image = model.caption_image(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
        probs = torch.softmax(model.caption_step(torch.full((2, 1), BOS), model.start_caption(image))[0], -1)
    cfg = DecodeConfig(max_length=1, banned_ids=(5,))
    draws = sample(model, image, 3000, cfg, BOS, EOS, PAD, (MASK,), generator=torch.Generator().manual_seed(0))
    assert draws.shape == (6000, 1)
    first = draws[:3000, 0]
    assert not {BOS, PAD, MASK, 5} & set(draws.flatten().tolist())
    # The most likely allowed token's frequency is within 4 standard errors of its probability.
    allowed = probs[0].clone()
    allowed[[BOS, PAD, MASK, 5]] = 0
    allowed /= allowed.sum()
    top = int(allowed.argmax())
    p = float(allowed[top])
    assert abs(float(first.eq(top).float().mean()) - p) < 4 * math.sqrt(p * (1 - p) / 3000)


def test_samples_end_with_eos_and_match_the_recomputed_decoder():
    model = _model()
    model.heads.get("mlm").bias.data[EOS] += 3.0  # some samples end early
    model.eval()
    with torch.no_grad():
        image = model.caption_image(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    cfg = DecodeConfig(max_length=6, min_length=2)
    cached = sample(model, image, 4, cfg, BOS, EOS, PAD, (MASK,), generator=torch.Generator().manual_seed(3))
    cfg_full = DecodeConfig(max_length=6, min_length=2, use_cache=False)
    full = sample(model, image, 4, cfg_full, BOS, EOS, PAD, (MASK,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(cached, full)
    assert cached.shape[0] == 8 and cached.shape[1] <= 6
    ended = 0
    for row in cached.tolist():
        assert EOS not in row[:2]  # min_length
        if EOS in row:
            ended += 1
            assert all(t == PAD for t in row[row.index(EOS) + 1:])
        else:
            assert PAD not in row
    assert 0 < ended


# ---- SCST ---------------------------------------------------------------------------------

def _scst_setup(mle_weight: float = 0.0):
    # Images 0-3 share one reference; images 4-7 (never in the batch) give the n-grams their IDF.
    refs = {i: ["w10 w11 w12"] for i in range(4)}
    refs.update({4: ["w13 w14 w15"], 5: ["w16 w17"], 6: ["w15 w16 w11"], 7: ["w17 w13 w14 w12"]})
    banned = tuple(i for i in range(3, 99) if i not in WORDS)
    settings = CaptionSettings(objective="scst", scst_samples=6, scst_mle_weight=mle_weight, max_length=5,
                               banned_ids=banned)
    batch = _batch()
    batch["input_ids"] = torch.tensor([[BOS, 10, 11, 12, EOS]] * 4)
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    return settings, refs, batch


def _mean_cider(model, task, batch, refs) -> tuple[float, float]:
    """(greedy, sampled) mean CIDEr-D of the batch's images, sampling with a fixed seed."""
    tok, decode = WordTokenizer(), task.settings.decode_config(beam_size=1)
    model.eval()
    with torch.no_grad():
        image = model.caption_image(batch["images"])
        greedy = generate(model, image, decode, BOS, EOS, PAD, (MASK,))
        drawn = sample(model, image, 20, decode, BOS, EOS, PAD, (MASK,), generator=torch.Generator().manual_seed(5))
    model.train()
    n = len(greedy)
    g = task.cider.scores([tok.decode(d.tokens) for d in greedy], [refs[i] for i in range(n)])
    texts = [tok.decode([t for t in row if t not in (EOS, PAD)]) for row in drawn.tolist()]
    s = task.cider.scores(texts, [refs[i] for i in range(n) for _ in range(20)])
    return sum(g) / len(g), sum(s) / len(s)


def test_scst_raises_the_reward():
    settings, refs, batch = _scst_setup(mle_weight=0.0)  # the policy gradient alone
    model = _model()
    task = CaptionTask(settings, WordTokenizer(), refs)
    torch.manual_seed(0)
    greedy0, sampled0 = _mean_cider(model, task, batch, refs)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(30):
        out = task.training_step(model, batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    greedy1, sampled1 = _mean_cider(model, task, batch, refs)
    assert set(out) == {"loss", "rl", "reward", "greedy_reward"}
    assert sampled1 > sampled0 + 0.1 and greedy1 > greedy0 + 0.2, (greedy0, greedy1, sampled0, sampled1)


class _ConstantReward:
    def scores(self, candidates, references):
        return [0.7] * len(candidates)


def test_scst_baseline_cancels_equal_rewards():
    """When every sample scores what the greedy caption scores, the policy gradient is zero;
    with an MLE share the loss is that share of the MLE loss."""
    settings, refs, batch = _scst_setup(mle_weight=0.0)
    model = _model()
    task = CaptionTask(settings, WordTokenizer(), refs)
    task.cider = _ConstantReward()
    out = task.training_step(model, batch)
    out["loss"].backward()
    assert out["loss"].item() == 0.0 and out["reward"].item() == pytest.approx(0.7)
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    task.settings.scst_mle_weight = 0.3
    out = task.training_step(model, batch)
    mle, _ = caption_mle_loss(model, batch["images"], batch["input_ids"], batch["attention_mask"])
    assert out["loss"].item() == pytest.approx(0.3 * mle.item(), rel=1e-5)


def test_scst_needs_references():
    with pytest.raises(ValueError, match="training references"):
        CaptionTask(CaptionSettings(objective="scst"), WordTokenizer(), None)
    settings, refs, batch = _scst_setup()
    task = CaptionTask(settings, WordTokenizer(), {k: v for k, v in refs.items() if k != 2})
    with pytest.raises(KeyError, match="no references for image id 2"):
        task.training_step(_model(), batch)


# ---- GOLD ---------------------------------------------------------------------------------

def test_gold_weights_hand_computed():
    p = torch.tensor([[0.5, 0.2, 0.9, 0.7], [0.05, 0.3, 0.0, 0.0]])
    real = torch.tensor([[True, True, True, False], [True, True, False, False]])
    w = gold_weights(p, real, min_weight=0.1)
    # p_t times the mean of p from t to the end (padding not counted), floored at 0.1
    expected = torch.tensor([[0.5 * 1.6 / 3, 0.2 * 1.1 / 2, 0.9 * 0.9, 0.0],
                             [max(0.05 * 0.35 / 2, 0.1), 0.3 * 0.3, 0.0, 0.0]])
    expected[1, 1] = max(expected[1, 1].item(), 0.1)
    torch.testing.assert_close(w, expected)
    assert gold_weights(p, real, min_weight=0.2)[0, 1].item() == pytest.approx(0.2)


def test_gold_loss_hand_checks_and_gradients():
    model, batch = _model(), _batch()
    behaviour = _model()  # the same weights: a frozen copy
    behaviour.requires_grad_(False)
    images, ids, mask = batch["images"], batch["input_ids"], batch["attention_mask"]
    # A fresh model gives every token p ~ 1/100, so every weight would be the floor: none here.
    loss, logs = gold_loss(model, behaviour, images, ids, mask, min_weight=0.0)
    logp, real, _ = target_logprobs(model, model.caption_image(images), ids, mask)
    w = gold_weights(logp.detach().exp(), real, 0.0)
    assert w[real].std() > 0.1 * w[real].mean()
    hand = torch.stack([(-(logp[b] * w[b])[real[b]]).sum() / real[b].sum() for b in range(len(ids))]).mean()
    assert loss.item() == pytest.approx(hand.item(), rel=1e-5)
    assert logs["gold_weight"].item() == pytest.approx(w[real].mean().item(), rel=1e-5)
    # Weights floored at 1 are all 1 (p * mean p <= 1): the loss is the mean of the per-caption
    # cross-entropies, which is the MLE loss on captions of one length.
    same_len = {k: v[[0, 2, 3]] for k, v in batch.items()}
    ones, _ = gold_loss(model, behaviour, same_len["images"], same_len["input_ids"], same_len["attention_mask"],
                        min_weight=1.0)
    mle, _ = caption_mle_loss(model, same_len["images"], same_len["input_ids"], same_len["attention_mask"])
    assert ones.item() == pytest.approx(mle.item(), rel=1e-5)
    # Gradients reach the trained model only, never the frozen copy or through the weights.
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert all(p.grad is None for p in behaviour.parameters())
    # Tokens under padding change nothing.
    other = ids.clone()
    other[1, 5:] = 50
    with torch.no_grad():
        a, _ = gold_loss(model, behaviour, images, ids, mask, min_weight=0.0)
        b, _ = gold_loss(model, behaviour, images, other, mask, min_weight=0.0)
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
    # The weights come from the copy: a copy that likes the references differently changes the loss.
    with torch.no_grad():
        behaviour.heads.get("mlm").bias[ids[:, 1:].flatten()] += 3.0
        c, _ = gold_loss(model, behaviour, images, ids, mask, min_weight=0.0)
    assert c.item() != pytest.approx(a.item(), rel=1e-3)


def test_gold_copy_is_frozen_refreshed_and_not_checkpointed():
    model, batch = _model(), _batch()
    task = CaptionTask(CaptionSettings(objective="gold", gold_refresh_every=2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    start = model.heads.get("mlm").bias.detach().clone()
    for step in (1, 2, 3):
        out = task.training_step(model, batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        task.on_step_end(model, step)
        copy_bias = task._behaviour[0].heads.get("mlm").bias
        # refreshed after step 2 only: until then the copy holds the starting weights
        expected = model.heads.get("mlm").bias if step == 2 else (start if step == 1 else None)
        if expected is not None:
            torch.testing.assert_close(copy_bias, expected.detach())
        else:
            assert not torch.equal(copy_bias, model.heads.get("mlm").bias.detach())
    assert set(out) == {"loss", "gold_weight", "mle", "token_acc"}
    assert not task._behaviour[0].training and not any(p.requires_grad for p in task._behaviour[0].parameters())
    assert list(task.parameters()) == [] and task.state_dict() == {}


# ---- the config key -----------------------------------------------------------------------

def test_objective_key_chooses_the_objective():
    from fibervl.engine.config import parse_cli
    from fibervl.recipes.caption import CaptionConfig

    for name, key in (("mle", "token_acc"), ("gold", "gold_weight"), ("scst", "greedy_reward")):
        cfg, _ = parse_cli(CaptionConfig, [f"caption.objective={name}", "caption.max_length=4"])
        assert cfg.caption.objective == name
        settings, refs, batch = _scst_setup()
        task = CaptionTask(cfg.caption, WordTokenizer(), refs)
        assert key in task.training_step(_model(), batch)
    with pytest.raises(ValueError, match="caption.objective must be one of mle, scst, gold; got 'cider'"):
        parse_cli(CaptionConfig, ["caption.objective=cider"])
    assert CaptionSettings().objective == "mle"


def test_recipe_trains_scst_on_cached_prefixes(shapes_tiny, tmp_path, capsys, monkeypatch):
    """The recipe end to end but for the scoring (pycocoevalcap's METEOR alone takes most of a
    minute): the batches' image ids find the training references, and SCST trains on cached
    image prefixes (GOLD's recipe path is MLE's)."""
    from fibervl.cli import main
    from fibervl.recipes import caption as recipe

    evaluated = []

    def fake_evaluation(model, tokenizer, reader, *args, **kwargs):
        evaluated.append(reader.split)
        return {"cider": 0.0}, []

    monkeypatch.setattr(recipe, "evaluate_captioning", fake_evaluation)
    run_dir = tmp_path / "scst"
    assert main(["finetune", "caption", "--config", "configs/fiber-tiny_caption_shapes.yaml", "model.init=",
                 f"data.root={shapes_tiny}", f"train.run_dir={run_dir}", "train.max_steps=2", "train.batch_size=4",
                 "train.progress_bar=false", "train.ckpt_every=null", "train.precision=fp32",
                 "caption.max_length=5", "caption.scst_samples=2", "caption.objective=scst",
                 "model.freeze_prefix=true", "data.cache_image_prefix=true"]) == 0
    assert "cached the image prefixes" in capsys.readouterr().out and evaluated == ["val"]
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_log = next(rec for rec in logged if "reward" in rec)
    assert train_log["step"] == 2 and {"greedy_reward", "rl", "mle"} <= set(train_log)
    assert (run_dir / "model" / "model.safetensors").exists()

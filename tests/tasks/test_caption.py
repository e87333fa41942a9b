"""Captioning: the key/value cache, cached == recomputed decoding, MLE training, metrics, CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from fibervl.modeling.fiber import FiberModel
from fibervl.tasks.caption import caption_mle_loss
from fibervl.tasks.decoding import DecodeConfig, generate
from fibervl.testing.configs import micro_config
from fibervl.testing.models import set_fusion_gates

BOS, PAD, EOS, MASK = 0, 1, 2, 99


def _active_model(seed: int = 1, eos_bias: float = 1.5, bigram_buckets: int = 0) -> FiberModel:
    """A micro model with fusion switched on and weights spread enough for varied captions."""
    torch.manual_seed(0)
    cfg = micro_config()
    cfg = cfg.replace(text=dataclasses.replace(cfg.text, bigram_buckets=bigram_buckets))
    model = FiberModel(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".alpha"):
                p.fill_(0.7)
            elif p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        # Make EOS likely enough that some captions end early and others run to max_length.
        model.heads.get("mlm").bias[EOS] += eos_bias
    return model


def _image_tokens(model, n: int = 4, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return model.caption_image(torch.randn(n, 3, 64, 64, generator=g))


@pytest.mark.parametrize("bigram_buckets", [0, 64])
def test_cached_steps_match_full_sequence_logits(bigram_buckets):
    model = _active_model(bigram_buckets=bigram_buckets)
    assert all(layer.t2i is None or layer.t2i.alpha.item() != 0 for layer in model.text.layers)
    image = _image_tokens(model, 2)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(4, 99, (2, 9), generator=g)
    ids[:, 0] = BOS
    with torch.no_grad():
        full = model.mlm_logits(model.caption_features(image, ids))
        cache = model.start_caption(image)
        logits, cache = model.caption_step(ids[:, :4], cache)  # a multi-token prefix, then one at a time
        torch.testing.assert_close(logits, full[:, 3], atol=1e-5, rtol=1e-5)
        for t in range(4, 9):
            logits, cache = model.caption_step(ids[:, t:t + 1], cache)
            torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=1e-5)
    assert cache.length == 9 and cache.real.tolist() == [9, 9]
    # Reordering the batch of the cache reorders the next step's logits.
    with torch.no_grad():
        flipped = cache.index_select(torch.tensor([1, 0]))
        nxt = torch.full((2, 1), 7)
        a, _ = model.caption_step(nxt, cache)
        b, _ = model.caption_step(nxt, flipped)
    torch.testing.assert_close(b, a.flip(0))


def test_cache_positions_follow_roberta_rule():
    """Positions continue after the cached tokens: the cached embedding of a new token equals
    the full-sequence embedding at that index (pad_id + 1 + index)."""
    model = _active_model()
    ids = torch.tensor([[BOS, 5, 6, 7]])
    emb = model.text.embeddings
    with torch.no_grad():
        full = emb(ids)
        step = emb(ids[:, 3:], past_real=torch.tensor([3]))
    torch.testing.assert_close(step[:, 0], full[:, 3])


def test_cached_bigram_embeddings_take_the_previous_token():
    """With bigram embeddings a token's embedding depends on the token before it: a cached step
    given that token equals the full text, and the same token after another one differs."""
    emb = _active_model(bigram_buckets=64).text.embeddings
    ids = torch.tensor([[BOS, 5, 6, 7], [BOS, 8, 6, 7]])
    with torch.no_grad():
        full = emb(ids)
        step = emb(ids[:, 2:], past_real=torch.tensor([2, 2]), previous=ids[:, 1])
        without_previous = emb(ids[:, 2:], past_real=torch.tensor([2, 2]))
    torch.testing.assert_close(step, full[:, 2:])
    assert not torch.allclose(full[0, 2], full[1, 2])  # "6" after "5" is not "6" after "8"
    torch.testing.assert_close(full[0, 3], full[1, 3])  # "7" after "6" in both
    assert not torch.allclose(without_previous[:, 0], full[:, 2])


@pytest.mark.parametrize("beam_size,length_penalty,bigram_buckets",
                         [(1, 1.0, 0), (3, 1.0, 0), (3, 0.0, 0), (4, 2.0, 0), (1, 1.0, 64), (3, 1.0, 64)])
def test_cached_and_recomputed_decoding_agree(beam_size, length_penalty, bigram_buckets):
    model = _active_model(bigram_buckets=bigram_buckets)
    image = _image_tokens(model)
    kw = dict(beam_size=beam_size, max_length=10, length_penalty=length_penalty, banned_ids=(5,))
    cached = generate(model, image, DecodeConfig(**kw), BOS, EOS, PAD, (MASK,))
    recomputed = generate(model, image, DecodeConfig(**kw, use_cache=False), BOS, EOS, PAD, (MASK,))
    assert [d.tokens for d in cached] == [d.tokens for d in recomputed]
    assert [d.finished for d in cached] == [d.finished for d in recomputed]
    for a, b in zip(cached, recomputed):
        assert a.score == pytest.approx(b.score, abs=1e-4)
    tokens = [t for d in cached for t in d.tokens]
    assert not {BOS, PAD, MASK, 5, EOS} & set(tokens)
    assert all(len(d.tokens) <= 10 for d in cached)
    # The setting decodes non-trivially: captions differ between images.
    assert len({tuple(d.tokens) for d in cached}) > 1


def test_beam_search_scores_at_least_greedy():
    """With no length normalisation, beam search maximises the summed log-probability over a
    larger set than greedy does, so its best caption never scores below greedy's."""
    model = _active_model(eos_bias=3.0)
    image = _image_tokens(model)
    greedy = generate(model, image, DecodeConfig(beam_size=1, max_length=8), BOS, EOS, PAD)
    beam = generate(model, image, DecodeConfig(beam_size=4, max_length=8, length_penalty=0.0), BOS, EOS, PAD)
    for g, b in zip(greedy, beam):
        assert b.score >= g.score - 1e-4


def test_mle_loss_falls_on_a_few_batches():
    torch.manual_seed(0)
    model = set_fusion_gates(FiberModel(micro_config()), 0.5)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 64, 64, generator=g)
    ids = torch.randint(4, 99, (4, 8), generator=g)
    ids[:, 0], ids[:, -1] = BOS, EOS
    ids[2, 5:] = PAD
    ids[2, 4] = EOS
    mask = ids.ne(PAD).long()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss, _ = caption_mle_loss(model, images, ids, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0]
    # Padding is ignored: changing the ids under padding changes nothing.
    other = ids.clone()
    other[2, 6:] = 50
    with torch.no_grad():
        a, _ = caption_mle_loss(model, images, ids, mask)
        b, _ = caption_mle_loss(model, images, other, mask)
    assert a.item() == pytest.approx(b.item(), abs=1e-6)


java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's tokenizer and METEOR need Java")


@java
def test_caption_metrics_plumbing():
    pytest.importorskip("pycocoevalcap")
    from fibervl.metrics.caption import caption_scores

    refs = {1: ["a red circle and a blue square", "two shapes on grey"],
            2: ["three green stars on a white background", "some green stars"],
            3: ["one small yellow triangle", "a yellow triangle"]}
    same = caption_scores({k: v[0] for k, v in refs.items()}, refs)
    assert same["bleu_4"] == pytest.approx(100.0, abs=1e-3)
    assert same["meteor"] == pytest.approx(100.0, abs=1e-3)
    assert same["rouge_l"] == pytest.approx(100.0, abs=1e-3)
    worse = caption_scores({1: "a red circle", 2: "blue things", 3: "a triangle"}, refs)
    for key in ("bleu_4", "meteor", "rouge_l", "cider"):
        assert worse[key] < same[key]
    assert same["spice"] is None and same["spice_status"].startswith("unavailable")
    with pytest.raises(ValueError, match="no reference"):
        caption_scores({4: "x"}, refs)


@java
def test_finetune_evaluate_predict_cli(shapes_tiny, tmp_path, capsys):
    pytest.importorskip("pycocoevalcap")
    from fibervl.cli import main

    run_dir = tmp_path / "run"
    assert main(["finetune", "caption", "--config", "configs/fiber-tiny_caption_shapes.yaml", "model.init=",
                 f"data.root={shapes_tiny}", f"train.run_dir={run_dir}", "train.max_steps=2", "train.batch_size=4",
                 "train.progress_bar=false", "train.ckpt_every=null", "train.precision=fp32", "data.num_eval=4",
                 "caption.max_length=6", "caption.beam_size=2"]) == 0
    assert "cider=" in capsys.readouterr().out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["images"] == 4 and metrics["spice_status"].startswith("unavailable")
    assert (run_dir / "model" / "tokenizer" / "tokenizer.json").exists()
    assert len(json.loads((run_dir / "predictions_val.json").read_text())) == 4

    image = sorted((shapes_tiny / "images").rglob("*.jpg"))[0]
    assert main(["predict", "caption", "--model", str(run_dir / "model"), "--image", str(image), "--beam", "2",
                 "--max-length", "5"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["image"] == str(image) and isinstance(out["caption"], str)

    results = tmp_path / "out" / "captions.json"
    assert main(["evaluate", "caption", "--model", str(run_dir), f"data.root={shapes_tiny}", "--split", "test",
                 "--num-eval", "3", "caption.max_length=5", "--results", str(results)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["split"] == "test" and result["images"] == 3 and 0 <= result["bleu_4"] <= 100
    # the COCO caption results file, scored on its own, gives the printed CIDEr
    from fibervl.data.shapes import ShapesDataset
    from fibervl.metrics.caption import caption_scores

    rows = json.loads(results.read_text())
    assert all(set(r) == {"image_id", "caption"} and isinstance(r["image_id"], int) for r in rows)
    refs = {img["image_id"]: img["captions"] for img in ShapesDataset(shapes_tiny).captions("test").images[:3]}
    assert sorted(r["image_id"] for r in rows) == sorted(refs)
    rescored = caption_scores({r["image_id"]: r["caption"] for r in rows}, refs)
    assert rescored["cider"] == pytest.approx(result["cider"], abs=0.006)


def test_best_constant_caption_baseline_picks_the_best_single_sentence():
    from types import SimpleNamespace

    from fibervl.metrics.caption import caption_scores, constant_caption_cider
    from fibervl.metrics.baselines import best_constant_caption_baseline

    train = SimpleNamespace(images=[{"captions": ["a red star", "a red star", "two shapes"]},
                                    {"captions": ["a blue circle", "two shapes"]}])
    refs = {1: ["two shapes", "two shapes on a plain background"], 2: ["two shapes", "a green square"],
            3: ["a red star", "two shapes"]}
    evals = SimpleNamespace(images=[{"image_id": k, "captions": v} for k, v in refs.items()])
    best = best_constant_caption_baseline(train, evals)
    pool = ["a red star", "two shapes", "a blue circle"]  # every training caption
    scores = constant_caption_cider(pool, refs)
    # CIDEr weighs n-grams by rarity: "two shapes", in every image's references, scores ~0
    assert best == {"caption": "a red star", "cider": max(scores)} and scores[1] < scores[0]
    # the same numbers as scoring the constant predictions the usual way
    for caption, score in zip(pool, scores):
        assert abs(score - caption_scores({k: caption for k in refs}, refs)["cider"]) < 1e-9

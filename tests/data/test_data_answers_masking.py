import torch

from fibervl.data import AnswerVocabulary, Sample, answer_score, mask_tokens, normalize_answer
from fibervl.data.tokenizer import train_bytelevel_bpe


def test_normalize_answer():
    assert normalize_answer(" Two ") == "2"
    assert normalize_answer("the Red.") == "red"
    assert normalize_answer("3.5") == "3.5"
    assert normalize_answer("yes!") == "yes"


def test_answer_scores_match_vqa_accuracy():
    assert [round(answer_score(k), 2) for k in range(5)] == [0.0, 0.3, 0.6, 0.9, 1.0]
    assert answer_score(10) == 1.0


def test_vocabulary_targets_and_round_trip(tmp_path):
    samples = [Sample("1", 1, answers=["red"] * 8 + ["orange"] * 2), Sample("2", 2, answers=["2"] * 9 + ["two"])]
    vocab = AnswerVocabulary.build(samples)
    assert vocab.answers[0] == "2" and "Red" in vocab and "purple" not in vocab
    t = vocab.targets(samples[0].answers)
    assert t[vocab.index["red"]] == 1.0 and abs(t[vocab.index["orange"]] - 0.6) < 1e-6
    assert vocab.batch_targets([s.answers for s in samples]).shape == (2, len(vocab))
    vocab.save(tmp_path / "v.json")
    assert AnswerVocabulary.load(tmp_path / "v.json").answers == vocab.answers


def test_mask_tokens_never_touches_specials_or_padding():
    tok = train_bytelevel_bpe(["a red circle and a blue star"] * 30, vocab_size=300)
    batch = tok(["a red circle and a blue star " * 5, "a red"], max_length=40)
    g = torch.Generator().manual_seed(0)
    masked, labels = mask_tokens(batch.input_ids, batch.attention_mask, tok, probability=0.5, generator=g)
    chosen = labels != -100
    assert chosen.any()
    assert torch.equal(labels[chosen], batch.input_ids[chosen])
    special = torch.isin(batch.input_ids, torch.tensor(sorted(tok.special_token_ids)))
    assert not (chosen & special).any() and torch.equal(masked[special], batch.input_ids[special])
    assert torch.equal(masked[~chosen], batch.input_ids[~chosen])
    frac_mask = (masked[chosen] == tok.mask_token_id).float().mean()
    assert 0.6 < frac_mask < 0.95

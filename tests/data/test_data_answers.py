import pytest

from fibervl.data import AnswerVocabulary, Sample, answer_score, normalize_answer


@pytest.mark.parametrize("raw, normalised", [
    ("Two", "2"), ("the Red.", "red"), ("3.5", "3.5"), ("yes!", "yes"), ("an apple", "apple"),
    ("dont", "don't"), ("Its  a  dog", "its dog"), ("1,000", "1000"), ("black/white", "black white"),
    ("left - right", "left right"), ("ten", "10"), ("none", "0"),
])
def test_normalize_answer(raw, normalised):
    assert normalize_answer(raw) == normalised


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

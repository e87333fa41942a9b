import json

import pytest
import torch
from tokenizers import pre_tokenizers

from fibervl.data.tokenizer import Tokenizer, TokenizerFileError, train_bytelevel_bpe

TEXTS = ["a red circle to the left of a blue square", "how many stars are there?",
         "the small green triangle", "two white crosses and a black ring"] * 30


@pytest.fixture(scope="module")
def tok():
    return train_bytelevel_bpe(TEXTS, vocab_size=400)


def test_special_ids_follow_roberta(tok):
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token_id == tok.vocab_size - 1
    assert tok.id_to_token(tok.mask_token_id) == "<mask>"


def test_round_trip_and_special_tokens(tok):
    text = "a red circle to the left of a blue square"
    batch = tok([text])
    ids = batch.input_ids[0]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids) == text
    assert batch.input_ids.dtype == torch.int64 and batch.attention_mask.dtype == torch.int64


def test_padding_longest_and_fixed(tok):
    b = tok(["a red circle", "two white crosses and a black ring"])
    assert b.input_ids.shape[0] == 2
    assert b.attention_mask[0].sum() < b.attention_mask[1].sum() == b.input_ids.shape[1]
    assert (b.input_ids[0][b.attention_mask[0] == 0] == tok.pad_token_id).all()
    b16 = tok(["a red circle"], padding=16)
    assert b16.input_ids.shape == (1, 16)
    bm = tok(["a red circle"], max_length=12, padding="max_length")
    assert bm.input_ids.shape == (1, 12)
    with pytest.raises(ValueError):
        tok(["two white crosses and a black ring"], padding=3)


def test_truncation_keeps_eos(tok):
    b = tok(["two white crosses and a black ring " * 20], max_length=10)
    assert b.input_ids.shape == (1, 10)
    assert b.input_ids[0, -1] == tok.eos_token_id and b.input_ids[0, 0] == tok.bos_token_id


def test_offsets_map_back_to_substrings(tok):
    text = "the small green triangle"
    b = tok([text])
    pieces = [text[s:e] for s, e in b.offsets[0][1:-1]]
    assert "".join(pieces) == text.replace(" ", "")  # offsets are trimmed of the leading space
    assert b.offsets[0][0] == (0, 0) and b.offsets[0][-1] == (0, 0)
    start = text.index("green")
    covering = [j for j, (s, e) in enumerate(b.offsets[0]) if s < start + 5 and e > start]
    assert "".join(text[b.offsets[0][j][0]:b.offsets[0][j][1]] for j in covering) == "green"


def test_no_prefix_space_on_first_word(tok):
    # roberta-base: "a" at the start and "Ġa" after a space are different tokens.
    first = tok(["a"]).input_ids[0, 1].item()
    later = tok(["x a"]).input_ids[0, -2].item()
    assert tok.id_to_token(first) == "a" and tok.id_to_token(later) == "Ġa"


def test_empty_emoji_and_rtl(tok):
    empty = tok([""])
    assert empty.input_ids.tolist() == [[tok.bos_token_id, tok.eos_token_id]]
    for text in ["a red 😀 star", "שלום עולם", "مرحبا بالعالم", "mixed עברית and عربي 🎉"]:
        b = tok([text])
        assert tok.decode(b.input_ids[0]) == text  # byte-level BPE: nothing is lost
        for s, e in b.offsets[0][1:-1]:
            assert 0 <= s <= e <= len(text)  # a lone space token gets an empty span


def test_save_and_load_tokenizer_json(tok, tmp_path):
    tok.save(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    direct = Tokenizer.from_pretrained(tmp_path / "tokenizer.json")
    text = ["how many stars are there?"]
    assert torch.equal(again(text).input_ids, tok(text).input_ids)
    assert torch.equal(direct(text).input_ids, tok(text).input_ids)


def test_hand_made_vocab_and_merges(tmp_path):
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    for merged in ("ca", "cat", "Ġcat"):
        vocab[merged] = len(vocab)
    vocab["<mask>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nc a\nca t\nĠ cat\n", encoding="utf-8")
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.vocab_size == len(vocab) and tok.mask_token_id == vocab["<mask>"]
    ids = tok(["cat a cat"]).input_ids[0].tolist()
    assert ids == [0, vocab["cat"], vocab["Ġ"], vocab["a"], vocab["Ġcat"], 2]
    assert tok.decode(ids) == "cat a cat"
    assert tok(["<mask>"]).input_ids[0, 1].item() == vocab["<mask>"]


def test_missing_files_name_the_path(tmp_path):
    with pytest.raises(TokenizerFileError, match=str(tmp_path / "nope")):
        Tokenizer.from_pretrained(tmp_path / "nope")
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(TokenizerFileError, match="merges.txt"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerFileError, match="tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)


def test_padding_settings_in_a_tokenizer_json_are_ignored(tok, tmp_path):
    path = tok.save(tmp_path)
    data = json.loads(path.read_text())
    data["padding"] = {"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": None,
                       "pad_id": 1, "pad_type_id": 0, "pad_token": "<pad>"}
    path.write_text(json.dumps(data))
    again = Tokenizer.from_pretrained(tmp_path)
    assert again(["a red circle"]).input_ids.shape == tok(["a red circle"]).input_ids.shape

"""Word-swap negatives: which captions they make, and the ITM term that uses them."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fibervl.data.tokenizer import train_shapes_tokenizer
from fibervl.modeling.fiber import FiberModel
from fibervl.tasks.pretrain_coarse import CoarseObjectives, CoarsePretrainTask
from fibervl.tasks.word_swaps import WordSwapTable
from fibervl.testing.configs import micro_config
from fibervl.testing.training import pair_batch

GROUPS = [["red", "blue", "green", "orange"], ["star", "ring", "heart"], ["left", "right"]]
TEXTS = ["a red star to the left of a blue ring", "a blue ring to the right of a red star", "a green heart",
         "red star", "one shape: a green ring", "a red heart and a blue star", "an orange star", "blue ring",
         "a red star and an orange ring"] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_shapes_tokenizer(TEXTS, vocab_size=400)


@pytest.fixture(scope="module")
def table(tokenizer):
    return WordSwapTable.from_words(GROUPS, tokenizer)


def swap_texts(tokenizer, table, texts, seed=0):
    batch = tokenizer(texts, max_length=20)
    out, group = table.swap(batch.input_ids, batch.attention_mask, torch.Generator().manual_seed(seed))
    made = group >= 0
    assert torch.equal(out.ne(batch.input_ids).sum(1) > 0, made), "a row changed exactly when it was made"
    return [tokenizer.decode(row) for row in out], made.tolist()


def test_two_words_of_a_group_trade_places_or_an_antonym_replaces(tokenizer, table):
    seen = set()
    for seed in range(40):
        (text,), (made,) = swap_texts(tokenizer, table, ["a red star to the left of a blue ring"], seed)
        assert made
        seen.add(text)
    assert seen == {"a blue star to the left of a red ring", "a red ring to the left of a blue star",
                    "a red star to the right of a blue ring"}


def test_captions_with_nothing_to_swap_stay_as_they_are(tokenizer, table):
    texts, made = swap_texts(tokenizer, table, ["a green heart", "one shape: a green ring", "a red heart and a red star"])
    assert made == [False, False, True]
    assert texts[:2] == ["a green heart", "one shape: a green ring"]
    assert texts[2] == "a red star and a red heart"  # two shapes, one colour: only the shapes can trade


def test_a_swap_keeps_each_places_spelling(tokenizer, table):
    """"red" opening a caption is a token without the leading space; the word moved there takes that form."""
    for seed in range(10):
        (text,), (made,) = swap_texts(tokenizer, table, ["red star and a blue ring"], seed)
        assert made and text in {"blue star and a red ring", "red ring and a blue star"}


def test_an_article_agrees_with_the_word_moved_after_it(tokenizer, table):
    seen = set()
    for seed in range(20):
        (text,), _ = swap_texts(tokenizer, table, ["an orange star and a blue ring"], seed)
        seen.add(text)
    assert seen == {"a blue star and an orange ring", "an orange ring and a blue star"}


def test_a_group_that_cannot_be_spelled_gives_way_to_one_that_can(tokenizer, table):
    """"green" is no single token without its leading space: opening a caption, it cannot take the
    place of "red", so the shapes trade instead, whatever group is drawn first."""
    assert table.token[table.words.index("green")][1] == -1
    for seed in range(10):
        (text,), _ = swap_texts(tokenizer, table, ["red star and a green ring"], seed)
        assert text == "red ring and a green star"


def test_padding_is_never_read(tokenizer, table):
    batch = tokenizer(["a green heart", "a red star to the left of a blue ring"], max_length=20)
    ids = batch.input_ids.clone()
    ids[0, batch.attention_mask[0] == 0] = tokenizer.token_to_id("Ġred")  # words hidden by the mask
    out, group = table.swap(ids, batch.attention_mask, torch.Generator().manual_seed(0))
    assert group[0] == -1 and group[1] >= 0 and torch.equal(out[0], ids[0])


def test_bad_groups_are_named(tokenizer):
    with pytest.raises(ValueError, match="'zebra' is not one token"):
        WordSwapTable.from_words([["red", "zebra"]], tokenizer)
    with pytest.raises(ValueError, match="at least two different"):
        WordSwapTable.from_words([["red", "red"]], tokenizer)
    with pytest.raises(ValueError, match="'red' is in more than one group"):
        WordSwapTable.from_words([["red", "blue"], ["red", "green"]], tokenizer)
    with pytest.raises(ValueError, match="needs objectives.swap_words"):
        CoarseObjectives(itm_swap=1.0)
    with pytest.raises(ValueError, match="needs objectives.itm > 0"):
        CoarseObjectives(itm_swap=1.0, itm=0.0, swap_words=GROUPS)


def test_the_swap_term_scores_each_image_against_its_own_swapped_caption(tokenizer, table, monkeypatch):
    """The coarse task adds one ITM pair, label 0, per caption that allows a swap: the image is that
    caption's own image and the text its swapped form."""
    micro = micro_config()
    text = dataclasses.replace(micro.text, vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.vocab_size - 1)
    model = FiberModel(dataclasses.replace(micro, text=text)).train()
    cfg = model.config
    texts = ["a red star to the left of a blue ring", "a green heart", "a blue ring and a red star",
             "one shape: a green ring", "a red heart and a blue star", "a green heart"]
    batch = pair_batch(6)
    tokens = tokenizer(texts, max_length=16)
    batch.update(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    objectives = CoarseObjectives(itm_swap=1.0, swap_words=GROUPS, mlm=0.0)
    task = CoarsePretrainTask(objectives, cfg.hidden_size, cfg.text.vocab_size, cfg.text.mask_token_id, (0, 1, 2),
                              swap_table=objectives.swap_table(tokenizer))
    fused_texts = []
    real_fuse = model.fuse

    def spy(images, ids, mask, **kw):
        fused_texts.append(kw["text_prefix"].shape[0])
        return real_fuse(images, ids, mask, **kw)

    monkeypatch.setattr(model, "fuse", spy)
    out = task.training_step(model, batch)
    assert fused_texts == [18, 3]  # the 3B pairs of ITM, then the three swappable captions
    assert {"itm_swap", "itm_swap_acc"} <= set(out)
    torch.testing.assert_close(out["loss"].detach(), out["itc"] + out["itm"] + out["itm_swap"])
    out["loss"].backward()
    assert model.heads.itm.weight.grad.abs().sum() > 0


def test_the_swap_term_ranks_and_cannot_teach_the_head_to_say_no(tokenizer, table):
    """The term compares two match scores of one image: the ITM head's bias cancels out of it, so
    it gets no gradient (labelling swapped captions 0 instead moved every answer to "no")."""
    micro = micro_config()
    text = dataclasses.replace(micro.text, vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.vocab_size - 1)
    model = FiberModel(dataclasses.replace(micro, text=text)).train()
    objectives = CoarseObjectives(itm_swap=1.0, swap_words=GROUPS)
    task = CoarsePretrainTask(objectives, model.config.hidden_size, tokenizer.vocab_size, tokenizer.vocab_size - 1,
                              (0, 1, 2), swap_table=objectives.swap_table(tokenizer))
    tokens = tokenizer(["a red star to the left of a blue ring", "a green heart", "a blue ring and a red star"],
                       max_length=16)
    images = pair_batch(3)["images"]
    prefix = model.image_prefix(images)
    match = model.itm_logits(model.fuse(None, tokens.input_ids, tokens.attention_mask, image_prefix=prefix).cls_feats)
    match = match[:, 1] - match[:, 0]
    loss, acc = task._itm_swap(model, prefix, tokens.input_ids, tokens.attention_mask, tokens.input_ids,
                               tokens.attention_mask, 0, torch.Generator().manual_seed(0), match)
    loss.backward()
    assert loss.item() > 0 and 0 <= acc.item() <= 1
    assert model.heads.itm.weight.grad.abs().sum() > 0
    assert model.heads.itm.bias.grad.abs().max() < 1e-6


def test_without_swaps_the_task_is_unchanged():
    model = FiberModel(micro_config()).train()
    cfg = model.config
    task = CoarsePretrainTask(CoarseObjectives(), cfg.hidden_size, cfg.text.vocab_size, cfg.text.mask_token_id,
                              (0, 1, 2))
    assert "itm_swap" not in task.training_step(model, pair_batch())
    with pytest.raises(ValueError, match="pass the task its swap_table"):
        CoarsePretrainTask(CoarseObjectives(itm_swap=1.0, swap_words=GROUPS), cfg.hidden_size, cfg.text.vocab_size,
                           cfg.text.mask_token_id, (0, 1, 2))

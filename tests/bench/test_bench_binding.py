"""bench/itm_binding_probe.py scores a model on swapped captions of a shapes set, and
bench/fusion_binding_toy.py draws scenes whose swapped captions differ only in binding."""

from __future__ import annotations

import torch

from fibervl.data.shapes.vocab import SWAP_GROUPS
from fibervl.data.tokenizer import Tokenizer
from fibervl.modeling.factory import create_model, fit_to_tokenizer, preset_config


def test_every_swap_word_is_one_token_of_a_shapes_sets_tokenizer(shapes_tiny, load_bench):
    """The shapes set's swap groups (the main job's coarse stage and the probe use them) are
    single tokens of its tokenizer, and a swap changes those words alone."""
    probe = load_bench("itm_binding_probe")
    tokenizer = Tokenizer.from_pretrained(shapes_tiny / "tokenizer")
    table = probe.WordSwapTable.from_words([list(g) for g in SWAP_GROUPS], tokenizer)  # raises for a word it cannot find
    rows = probe.split_captions(shapes_tiny, "val")
    assert rows and all(path.is_file() for path, _ in rows)
    batch = tokenizer([caption for _, caption in rows], max_length=40)
    swapped, group = table.swap(batch.input_ids, batch.attention_mask, torch.Generator().manual_seed(0))
    made = group >= 0
    assert made.float().mean() > 0.3  # every caption naming two colours or two shapes
    swap_words = {w for group in SWAP_GROUPS for w in group} | {"a", "an"}
    for row in made.nonzero().squeeze(1).tolist():
        before, after = rows[row][1].split(), tokenizer.decode(swapped[row]).split()
        changed = [(b, a) for b, a in zip(before, after) if b != a]
        assert len(after) == len(before) and changed
        assert all(b.strip(",:") in swap_words and a.strip(",:") in swap_words for b, a in changed), changed


def test_the_probe_scores_a_saved_model(shapes_tiny, tmp_path, capsys, load_bench):
    tokenizer = Tokenizer.from_pretrained(shapes_tiny / "tokenizer")
    model = create_model(fit_to_tokenizer(preset_config("fiber-tiny"), tokenizer))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save(tmp_path / "model" / "tokenizer")
    load_bench("itm_binding_probe").main([str(tmp_path / "model"), "--data", str(shapes_tiny)])
    out = capsys.readouterr().out
    assert "| colour |" in out and "| all |" in out


def test_toy_scenes_bind_the_same_words_two_ways(load_bench):
    toy = load_bench("fusion_binding_toy")
    scenes = toy.ToyScenes(grid=4, channels=8, object_scale=1.0)
    image, caption, swapped = scenes.draw(16, torch.Generator().manual_seed(0))
    assert image.shape == (16, 4, 4, 8) and caption.shape == swapped.shape == (16, 9)
    colour_words, shape_places = (2, 6), (3, 7)
    assert torch.equal(caption[:, shape_places], swapped[:, shape_places])
    assert torch.equal(caption[:, colour_words], swapped[:, colour_words].flip(1))
    assert bool((caption[:, 2] != caption[:, 6]).all())
    # each object's cell is its colour vector plus its shape vector over the noise
    first = scenes.last_places[:, 0]
    colour = caption[:, 2] - scenes.colour_word[0]
    shape = caption[:, 3] - scenes.shape_word[0]
    cells = image.flatten(1, 2)[torch.arange(16), first]
    expected = scenes.colour[colour] + scenes.shape[shape]
    assert ((cells - expected).std() - 1).abs() < 0.5  # what is left is the unit noise
    _, caption, replaced = scenes.draw(16, torch.Generator().manual_seed(0), negative="replace")
    assert bool((replaced[:, 2] != caption[:, 2]).all() & (replaced[:, 2] != caption[:, 6]).all())


def test_toy_relation_captions_put_the_first_shape_left_of_the_second(load_bench):
    toy = load_bench("fusion_binding_toy")
    scenes = toy.ToyScenes(grid=4, channels=64, object_scale=1.0)
    scenes.cell_positions = True
    image, caption, swapped = scenes.draw(32, torch.Generator().manual_seed(0), negative="relation")
    first, second = scenes.last_places[:, 0] % 4, scenes.last_places[:, 1] % 4  # columns
    assert bool((first < second).all())
    assert torch.equal(caption[:, [2, 6]], swapped[:, [6, 2]]) and torch.equal(caption[:, 3:6], swapped[:, 3:6])
    assert bool((caption[:, 3] == scenes.word_left).all())
    # every cell carries its position vector: an empty cell is that vector over the noise
    flat = image.flatten(1, 2)
    empty = [c for c in range(16) if c not in scenes.last_places[0].tolist()][0]
    assert ((flat[0, empty] - scenes.cell_position[empty]).std() - 1).abs() < 0.25  # without it: sqrt(2)
    assert scenes.last_shape_words == toy.RELATION_SHAPE_WORDS


def test_the_toy_trains_and_reports(capsys, load_bench):
    toy = load_bench("fusion_binding_toy")
    toy.main(["--steps", "2", "--eval-every", "2", "--eval-size", "16", "--batch-size", "4", "--attention-align", "1"])
    assert "step 2: loss" in capsys.readouterr().out
    toy.main(["--steps", "1", "--eval-every", "1", "--eval-size", "8", "--batch-size", "4", "--negative", "relation",
              "--cell-positions", "--attention-align", "1", "--slot-readout"])
    assert "relation negatives" in capsys.readouterr().out
    for readout in (["--flat-readout"], ["--query-readout", "2"]):
        toy.main(["--steps", "1", "--eval-every", "1", "--eval-size", "8", "--batch-size", "4", "--negative", "relation",
                  *readout])
        assert "step 1: loss" in capsys.readouterr().out
    toy.main(["--steps", "1", "--eval-every", "1", "--eval-size", "8", "--batch-size", "4", "--bigram-buckets", "64",
              "--bigram-std", "0", "--shift-embeddings"])
    assert "step 1: loss" in capsys.readouterr().out


def test_composite_words_name_each_pair_in_one_token(load_bench):
    toy = load_bench("fusion_binding_toy")
    scenes = toy.ToyScenes(grid=4, channels=8, object_scale=1.0, composite=True)
    _, caption, swapped = scenes.draw(16, torch.Generator().manual_seed(0))
    pairs = set(scenes.pair_word.flatten().tolist())
    assert all(int(w) in pairs for w in caption[:, [2, 5]].flatten())
    assert bool((caption[:, [2, 5]] != swapped[:, [2, 5]]).all())  # both pair words change
    assert bool((caption[:, 7:] == toy.PAD).all())


def test_toy_captions_in_a_tokenizers_words(shapes_tiny, load_bench):
    toy = load_bench("fusion_binding_toy")
    tokenizer = Tokenizer.from_pretrained(shapes_tiny / "tokenizer")
    scenes = toy.ToyScenes(grid=4, channels=8, object_scale=1.0, tokenizer=tokenizer)
    _, caption, swapped = scenes.draw(4, torch.Generator().manual_seed(0))
    for row in range(4):
        words, other = tokenizer.decode(caption[row]).split(), tokenizer.decode(swapped[row]).split()
        assert len(words) == 7 and words[0] == "a" and words[3] == "and" and words[2] in toy.SHAPE_NAMES
        # "a C1 S1 and a C2 S2" -> "a C2 S1 and a C1 S2"
        assert (other[1], other[5]) == (words[5], words[1]) and (other[2], other[6]) == (words[2], words[6])


@torch.no_grad()
def test_toy_readouts_read_the_tokens_they_name(load_bench):
    toy = load_bench("fusion_binding_toy")
    torch.manual_seed(0)
    feats = torch.randn(3, 9, 8)
    slots = toy.SlotReadout(8, (2, 6))
    elsewhere, on_a_slot = feats.clone(), feats.clone()
    elsewhere[:, 4] += 1.0
    on_a_slot[:, 6] += 1.0
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[:, 7:] = 0
    assert torch.equal(slots(elsewhere, mask), slots(feats, mask))
    assert not torch.allclose(slots(on_a_slot, mask), slots(feats, mask))
    queries = toy.QueryReadout(8, 2)
    padded = feats.clone()
    padded[:, 7:] += 5.0
    torch.testing.assert_close(queries(padded, mask), queries(feats, mask))
    assert queries(feats, mask).shape == (3,)

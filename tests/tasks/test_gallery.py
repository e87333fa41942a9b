"""Retrieval over stored gallery prefixes: the same scores from memory, bf16 or a memory-mapped
file as from the images; the paper's Table 4 modes with their costs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from PIL import Image

from fibervl.data.tokenizer import train_bytelevel_bpe
from fibervl.modeling.fiber import FiberModel
from fibervl.tasks.gallery import bytes_per_image, image_prefix_rows, row_storage, text_prefix_rows, tokenize_gallery
from fibervl.tasks.retrieval import evaluate_retrieval, itm_pair_scores, itm_prefix_pair_scores, load_image_tensors
from fibervl.testing.configs import micro_config
from fibervl.testing.models import set_fusion_gates

WORDS = ["red", "blue", "green", "star", "heart", "circle", "small", "large"]


class Captions:
    """Five images, two captions each (what retrieval evaluation reads of a captions reader)."""

    def __init__(self, root: Path):
        g = torch.Generator().manual_seed(0)
        self.paths, self.texts, self.text_to_image, self.image_to_texts = [], [], [], []
        for i in range(5):
            path = root / f"{i}.png"
            Image.fromarray((torch.rand(40 + 4 * i, 48, 3, generator=g) * 255).byte().numpy()).save(path)
            self.paths.append(path)
            self.image_to_texts.append([])
            for _ in range(2):
                words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (3 + i % 3,), generator=g)]
                self.image_to_texts[-1].append(len(self.texts))
                self.texts.append("a " + " ".join(words))
                self.text_to_image.append(i)

    def retrieval_lists(self):
        return self.paths, self.texts, self.text_to_image, self.image_to_texts


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery")
    tokenizer = train_bytelevel_bpe(["a " + " ".join(WORDS)] * 8, vocab_size=280)
    cfg = micro_config().replace(heads=("itc", "itm"))
    cfg = cfg.replace(text=dataclasses.replace(
        cfg.text, vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.mask_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    torch.manual_seed(0)
    model = FiberModel(cfg).eval()
    set_fusion_gates(model, 0.5)
    return model, tokenizer, Captions(root), root


def test_row_storage_maps_a_file(tmp_path):
    rows = row_storage(3, (2, 2), torch.bfloat16, tmp_path, "x")
    rows[1] = torch.full((2, 2), 1.5)
    again = torch.from_file(str(tmp_path / "x.bin"), shared=True, size=12, dtype=torch.bfloat16).view(3, 2, 2)
    assert torch.equal(again[1], torch.full((2, 2), 1.5, dtype=torch.bfloat16))
    assert (tmp_path / "x.bin").stat().st_size == 3 * 4 * 2


def test_stored_prefixes_score_pairs_as_the_images_do(setup, tmp_path):
    model, tokenizer, captions, _ = setup
    ids, mask = tokenize_gallery(tokenizer, captions.texts, 16)
    pairs = torch.cartesian_prod(torch.arange(5), torch.arange(10))
    from_images = itm_pair_scores(model, load_image_tensors(captions.paths, 64), ids, mask, pairs, batch_size=7)
    # fp32 rows in memory and memory-mapped: the same numbers; images read 2 at a time
    for directory in (None, tmp_path):
        images = image_prefix_rows(model, captions.paths, 64, batch_size=2, directory=directory)
        texts = text_prefix_rows(model, ids, mask, batch_size=3, directory=directory)
        stored = itm_prefix_pair_scores(model, images, texts, mask, pairs, batch_size=7)
        torch.testing.assert_close(stored, from_images, rtol=1e-5, atol=1e-5)
    assert (tmp_path / "image_prefixes.bin").stat().st_size == 5 * bytes_per_image(model, 64)
    # bf16 rows take half the bytes and stay close
    images = image_prefix_rows(model, captions.paths, 64, dtype=torch.bfloat16)
    texts = text_prefix_rows(model, ids, mask, dtype=torch.bfloat16)
    assert images.dtype == torch.bfloat16 and bytes_per_image(model, 64, torch.bfloat16) * 2 == bytes_per_image(model, 64)
    close = itm_prefix_pair_scores(model, images, texts, mask, pairs)
    assert (close - from_images).abs().max() < 0.05 * from_images.abs().max()


def test_table4_modes_and_their_costs(setup, tmp_path):
    model, tokenizer, captions, _ = setup
    modes = ("itc", "itm", "itc+itm", "rerank@2", "rerank@10")
    m = evaluate_retrieval(model, tokenizer, captions, 64, 16, rerank_k=2, modes=modes, prefix_dir=tmp_path)
    assert m["itc/i2t_r1"] == m["itc_i2t_r1"] and m["itc/pairs"] == 0
    assert m["itm/pairs"] == m["itc+itm/pairs"] == 50
    # rerank@2: each image's 2 best texts and each text's 2 best images, each pair once
    assert 10 <= m["rerank@2/pairs"] <= 2 * 5 + 2 * 10
    assert m["rerank@2/t2i_r1"] == m["rerank_t2i_r1"]
    # re-ranking the whole gallery is the ensemble over all pairs (the paper's k >= gallery)
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"):
        assert m[f"rerank@10/{key}"] == pytest.approx(m[f"itc+itm/{key}"])
    assert all(m[f"{mode}/seconds"] > 0 for mode in modes) and m["prefixes/seconds"] > 0
    with pytest.raises(ValueError, match="unknown retrieval mode 'top5'"):
        evaluate_retrieval(model, tokenizer, captions, 64, 16, modes=("top5",))

"""fibervl.load: saved directories (with and without a card), run stage directories, presets,
every model family; the gallery saved and loaded."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import fibervl
from fibervl.data import DataError, Tokenizer
from fibervl.experiment import DataSpec
from fibervl.modeling.factory import create_model, fit_to_tokenizer
from fibervl.predict import Gallery, ModelCard, RetrievalPredictor, VqaPredictor, card_of, save
from fibervl.predict import retrieval as retrieval_module
from fibervl.recipes.common import export_task_model
from fibervl.testing.configs import albef_micro_config
from fibervl.testing.models import set_fusion_gates

from predict_helpers import ANSWERS


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_save_load_round_trip(coarse_dir, image_paths, tmp_path):
    model, processor = fibervl.load(coarse_dir, task="vqa")
    assert not model.training and processor.task == "vqa" and processor.answers == ANSWERS
    card = processor.card
    assert card.preset == "fiber-tiny" and card.family == "fiber" and card.tokenizer == "tokenizer"
    assert card.answers == "answers.json" and card.tasks == ["retrieval", "vqa", "nlvr2", "caption"]
    card.metrics, card.data = {"vqa_acc": 51.5}, {"root": "data/shapes"}
    card.extra["licence"] = "MIT"  # a key a newer fibervl wrote: kept as it is
    again = save(model, processor, tmp_path / "again")
    model2, processor2 = fibervl.load(again, task="vqa")
    assert _same_weights(model, model2)
    assert processor2.card == card and ModelCard.from_dict(card.to_dict()) == card
    assert json.loads((again / "config.json").read_text(encoding="utf-8"))["card"]["licence"] == "MIT"
    assert processor2.answers == ANSWERS and processor2.tokenizer.vocab_size == processor.tokenizer.vocab_size
    question = "what color is the star"
    assert (VqaPredictor(model, processor).predict(image_paths[:2], question)
            == VqaPredictor(model2, processor2).predict(image_paths[:2], question))


def test_load_a_run_stage_directory_and_an_old_one_without_a_card(coarse_dir, tmp_path):
    """``fibervl run`` writes runs/X/stages/<stage>/model/ (export_task_model) and metrics.json
    beside it; a directory saved before cards existed has no card in config.json."""
    model, processor = fibervl.load(coarse_dir)
    stage = tmp_path / "runs" / "X" / "stages" / "vqa"
    export_task_model(model, processor.tokenizer, stage, {"vqa_acc": 40.0}, files={"answers.json": ANSWERS},
                      data=DataSpec(root="data/shapes"))
    card = card_of(stage / "model")
    assert card.data["root"] == "data/shapes" and card.metrics == {"vqa_acc": 40.0} and card.answers == "answers.json"
    config = json.loads((stage / "model" / "config.json").read_text(encoding="utf-8"))
    config.pop("card")  # as written before cards existed
    (stage / "model" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    for where in (stage, stage / "model"):
        loaded, proc = fibervl.load(where, task="vqa")
        assert _same_weights(model, loaded) and proc.answers == ANSWERS
        assert proc.card.tasks == ["retrieval", "vqa", "nlvr2", "caption"] and proc.card.metrics == {"vqa_acc": 40.0}
    shutil.rmtree(stage / "model" / "tokenizer")
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        fibervl.load(stage)
    loaded, proc = fibervl.load(stage, tokenizer=coarse_dir / "tokenizer")
    assert proc.card.tokenizer is None and card_of(stage / "model").tokenizer is None


def test_load_refuses_what_it_cannot_do(coarse_dir, tmp_path):
    with pytest.raises(ValueError, match="cannot do 'detect'.*retrieval"):
        fibervl.load(coarse_dir, task="detect")
    bare = tmp_path / "no_answers"
    shutil.copytree(coarse_dir, bare)
    (bare / "answers.json").unlink()
    with pytest.raises(ValueError, match="answers.json"):
        fibervl.load(bare, task="vqa")
    with pytest.raises(ValueError, match="unknown task"):
        fibervl.load(coarse_dir, task="segment")
    with pytest.raises(ValueError, match="no tokenizer"):
        fibervl.load("fiber-tiny")
    with pytest.raises(FileNotFoundError, match="neither a model directory .* nor a preset name"):
        fibervl.load(tmp_path / "nothing_here")
    with pytest.raises(ValueError, match="does not fit"):
        fibervl.load(coarse_dir, tokenizer=_other_tokenizer(tmp_path))


def _other_tokenizer(tmp_path):
    from fibervl.data import train_bytelevel_bpe

    path = tmp_path / "other"
    train_bytelevel_bpe(["one two three four"] * 3, vocab_size=280, min_frequency=1).save(path)
    return path


@pytest.mark.parametrize("family", ["albef", "vlmo"])
def test_load_handles_every_family(family, tokenizer_dir, image_paths, tmp_path):
    from fibervl.modeling.factory import preset_config

    tok = Tokenizer.from_pretrained(tokenizer_dir)
    config = fit_to_tokenizer(albef_micro_config() if family == "albef" else preset_config("vlmo-tiny"), tok)
    torch.manual_seed(0)
    model = create_model(config, seed=None)
    directory = tmp_path / family
    model.save_pretrained(directory)
    tok.save(directory / "tokenizer")
    loaded, processor = fibervl.load(directory, task="retrieval")
    assert type(loaded) is type(model) and _same_weights(model, loaded)
    assert processor.card.family == family and processor.image_size == config.vision.image_size
    gallery = Gallery.build(loaded, processor, images=image_paths[:3])
    ranked = RetrievalPredictor(loaded, processor, gallery, rerank_k=2, top=3).predict(["a red star"])[0]["ranking"]
    assert sorted(r["item"] for r in ranked) == sorted(image_paths[:3])
    assert ranked[0]["score"] != ranked[0]["itc"]  # re-ranked with the family's ITM head


def test_gallery_save_and_load_give_the_same_ranking(coarse_dir, image_dir, image_paths, tmp_path):
    model, processor = fibervl.load(coarse_dir)
    (image_dir.parent / "bad").mkdir(exist_ok=True)
    bad = image_dir.parent / "bad" / "broken.png"
    bad.write_text("not an image")
    with pytest.raises(DataError):
        Gallery.build(model, processor, images=[*image_paths, str(bad)])
    with pytest.warns(UserWarning, match="left out of the gallery"):
        gallery = Gallery.build(model, processor, images=[*image_paths, str(bad)], skip_bad=True)
    assert gallery.items == image_paths
    loaded = Gallery.load(gallery.save(tmp_path / "gallery"))
    assert loaded.kind == "image" and loaded.items == gallery.items and torch.equal(loaded.embeddings, gallery.embeddings)
    queries = ["a red star", "two blue circles", "a green square"]
    before = RetrievalPredictor(model, processor, gallery, rerank_k=2, top=4).predict(queries)
    assert RetrievalPredictor(model, processor, loaded, rerank_k=2, top=4).predict(queries) == before
    other = set_fusion_gates(create_model(model.config, seed=None), 0.5)
    with pytest.raises(ValueError, match="another model"):
        RetrievalPredictor(other, processor, loaded)


def test_gallery_search_with_faiss_matches_the_matrix_product(coarse_dir, image_paths):
    pytest.importorskip("faiss")
    model, processor = fibervl.load(coarse_dir)
    gallery = Gallery.build(model, processor, images=image_paths)
    queries = torch.nn.functional.normalize(torch.randn(3, gallery.embeddings.shape[1]), dim=1)
    dense, dense_idx = gallery.search(queries, 3, use_faiss=False)
    found, found_idx = gallery.search(queries, 3, use_faiss=True)
    assert torch.equal(found_idx, dense_idx) and torch.allclose(found, dense, atol=1e-5)
    assert retrieval_module.faiss_available()

"""Every predictor gives the same results batched as one item at a time, and the fine-grained
ones give boxes in the original image's pixels."""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings

import pytest
from PIL import Image

import fibervl
from fibervl.data import load_image
from fibervl.predict import (
    CaptionPredictor, DetectionPredictor, Gallery, GroundingPredictor, Nlvr2Predictor, RefexpPredictor,
    RetrievalPredictor, VqaPredictor,
)

from predict_helpers import draw_scene


def assert_same(a, b, tol: float = 3e-4, where: str = "result") -> None:
    """Equal structure, strings and bools; numbers within ``tol`` (scores are rounded to 1e-4,
    boxes to 0.1 px: ``tol`` is scaled by 1000 for values above 1)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], tol, f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, tol, f"{where}[{k}]")
    elif isinstance(a, float) and not isinstance(a, bool):
        assert math.isclose(a, b, abs_tol=tol * (1000 if abs(a) > 1 else 1)), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def one_by_one(predict, *columns):
    return [predict(*[[c[k]] if isinstance(c, list) else c for c in columns])[0] for k in range(len(columns[0]))]


@pytest.fixture(scope="module")
def coarse(coarse_dir):
    return fibervl.load(coarse_dir)


@pytest.fixture(scope="module")
def fine(fine_dir):
    return fibervl.load(fine_dir, task="detect")


def test_vqa_batched_equals_one_by_one(coarse, image_paths):
    model, processor = coarse
    questions = ["what color is the star", "how many shapes", "is there a circle", "what shape is left of the red one"]
    batched = VqaPredictor(model, processor, top=3, batch_size=4).predict(image_paths, questions)
    single = one_by_one(VqaPredictor(model, processor, top=3, batch_size=1).predict, image_paths, questions)
    assert_same(batched, single)
    assert [r["question"] for r in batched] == questions and [r["image"] for r in batched] == image_paths
    assert all(r["answer"] == r["top"][0]["answer"] in processor.answers and len(r["top"]) == 3 for r in batched)


def test_caption_batched_equals_one_by_one(coarse, image_paths):
    model, processor = coarse
    batched = CaptionPredictor(model, processor, beam=2, max_length=6, batch_size=4).predict(image_paths)
    single = one_by_one(CaptionPredictor(model, processor, beam=2, max_length=6, batch_size=1).predict, image_paths)
    assert batched == single and all(isinstance(r["caption"], str) for r in batched)


def test_nlvr2_batched_equals_one_by_one(coarse, image_paths):
    model, processor = coarse
    lefts, rights = image_paths, image_paths[::-1]
    texts = ["the left image has two stars", "there is a circle", "a red square", "both images have a heart"]
    batched = Nlvr2Predictor(model, processor, batch_size=4).predict(lefts, rights, texts)
    single = one_by_one(Nlvr2Predictor(model, processor, batch_size=1).predict, lefts, rights, texts)
    assert_same(batched, single)
    assert all(r["answer"] == (r["p_true"] > 0.5) for r in batched)


def test_retrieval_batched_equals_one_by_one(coarse, image_paths):
    model, processor = coarse
    gallery = Gallery.build(model, processor, images=image_paths, batch_size=3)
    one_at_a_time = Gallery.build(model, processor, images=image_paths, batch_size=1)
    assert gallery.items == image_paths and (gallery.embeddings - one_at_a_time.embeddings).abs().max() < 1e-5
    queries = ["a red star", "two blue circles", "a green square on the left"]
    batched = RetrievalPredictor(model, processor, gallery, rerank_k=2, top=3, batch_size=3).predict(queries)
    single = one_by_one(RetrievalPredictor(model, processor, gallery, rerank_k=2, top=3, batch_size=1).predict, queries)
    assert_same(batched, single)
    for r in batched:
        scores = [x["score"] for x in r["ranking"]]
        assert scores[:2] == sorted(scores[:2], reverse=True)  # the re-ranked two, best first
        assert all(abs(x["score"] - x["itc"]) > 0 for x in r["ranking"][:2])  # ITM added
        assert r["ranking"][2]["score"] == r["ranking"][2]["itc"]  # below the re-ranked: ITC alone


def test_retrieval_of_texts_for_image_queries(coarse, image_paths):
    model, processor = coarse
    texts = ["a red star", "two blue circles", "a green square", "a yellow heart"]
    gallery = Gallery.build(model, processor, texts=texts)
    batched = RetrievalPredictor(model, processor, gallery, rerank_k=4, top=0, batch_size=4).predict(image_paths)
    single = one_by_one(RetrievalPredictor(model, processor, gallery, rerank_k=4, top=0, batch_size=1).predict,
                        image_paths)
    assert_same(batched, single)
    assert all(sorted(x["item"] for x in r["ranking"]) == sorted(texts) for r in batched)


def test_retrieval_weighs_itm_by_the_model_cards_weight(coarse, image_paths):
    model, processor = coarse
    gallery = Gallery.build(model, processor, texts=["a red star", "two blue circles", "a green square"])

    def itm_parts(predictor):  # per query: item -> (ITC, score - ITC)
        return [{x["item"]: (x["itc"], x["score"] - x["itc"]) for x in r["ranking"]}
                for r in predictor.predict(image_paths[:2])]

    assert processor.card.itm_weight == 1.0
    full = itm_parts(RetrievalPredictor(model, processor, gallery, rerank_k=3, top=0))
    half = itm_parts(RetrievalPredictor(model, processor, gallery, rerank_k=3, top=0, itm_weight=0.5))
    for f, h in zip(full, half):
        assert all(abs(h[item][1] - 0.5 * f[item][1]) < 2e-4 for item in f)
    ignoring = copy.copy(processor)
    ignoring.card = dataclasses.replace(processor.card, itm_weight=0.0)
    for r in RetrievalPredictor(model, ignoring, gallery, rerank_k=3, top=0).predict(image_paths[:2]):
        assert [x["score"] for x in r["ranking"]] == [x["itc"] for x in r["ranking"]]
        assert [x["itc"] for x in r["ranking"]] == sorted((x["itc"] for x in r["ranking"]), reverse=True)
    with pytest.raises(ValueError, match="itm_weight"):
        RetrievalPredictor(model, processor, gallery, itm_weight=-1)


def test_detection_batched_equals_one_by_one(fine, image_paths):
    model, processor = fine
    classes = ["star", "circle", "square", "heart"]
    batched = DetectionPredictor(model, processor, classes, threshold=0.3, top=5, batch_size=4).predict(image_paths)
    single = one_by_one(DetectionPredictor(model, processor, classes, threshold=0.3, top=5, batch_size=1).predict,
                        image_paths)
    assert_same(batched, single)
    assert all(len(r["detections"]) == 5 for r in batched)  # the prior raised to 0: boxes above 0.3


def test_grounding_and_refexp_batched_equal_one_by_one(fine, image_paths):
    model, processor = fine
    texts = ["a red star and a blue circle", "two green squares", "the small heart", "a big yellow circle on the left"]
    phrases = [["red star", "blue circle"], ["green squares"], ["heart"], ["yellow circle"]]
    batched = GroundingPredictor(model, processor, top_k=2, batch_size=4).predict(image_paths, texts, phrases)
    single = one_by_one(GroundingPredictor(model, processor, top_k=2, batch_size=1).predict, image_paths, texts, phrases)
    assert_same(batched, single)
    assert [[p["phrase"] for p in r["phrases"]] for r in batched] == phrases
    assert all(len(p["boxes"]) == 2 and p["scores"][0] >= p["scores"][1] for r in batched for p in r["phrases"])
    refexp = RefexpPredictor(model, processor, batch_size=4).predict(image_paths, texts)
    assert_same(refexp, one_by_one(RefexpPredictor(model, processor, batch_size=1).predict, image_paths, texts))
    whole = GroundingPredictor(model, processor, top_k=1, batch_size=4).predict(image_paths, texts)
    assert [r["box"] for r in refexp] == [r["phrases"][0]["boxes"][0] for r in whole]  # the whole expression's best box


@pytest.mark.parametrize("task", ["ground", "detect"])
def test_boxes_are_in_the_original_pixels_of_a_non_square_image(fine, task):
    """The detector sees every image resized with its aspect ratio kept (fiber-tiny-fine: longer
    side 128, so 200 x 120 -> 128 x 77); predicting on that resized image itself gives the same
    boxes in its own frame, so the boxes of the original must be those scaled back."""
    model, processor = fine
    wide = draw_scene((200, 120), 0)
    h, w = processor.detector_size.input_size(200, 120)
    assert (w, h) == (128, 77)
    scaled = wide.resize((w, h), Image.BICUBIC)  # exactly the network's input
    if task == "ground":
        predictor = GroundingPredictor(model, processor, top_k=3)
        boxes = [[b for p in r["phrases"] for b in p["boxes"]] for r in predictor.predict([wide, scaled], "a red star")]
    else:
        predictor = DetectionPredictor(model, processor, ["star", "circle"], threshold=0.3, top=3)
        boxes = [[d["box"] for d in r["detections"]] for r in predictor.predict([wide, scaled])]
    sx, sy = 200 / w, 120 / h
    assert len(boxes[0]) == 3 and len(boxes[0]) == len(boxes[1])
    for b, s in zip(*boxes):
        assert b == pytest.approx([s[0] * sx, s[1] * sy, s[2] * sx, s[3] * sy], abs=0.25)
        assert 0 <= b[0] <= b[2] <= 200 and 0 <= b[1] <= b[3] <= 120


def test_exif_rotated_photo_is_predicted_as_displayed(fine, tmp_path):
    """A JPEG stored 120 x 200 with EXIF orientation 6 is displayed (and predicted) 200 x 120."""
    model, processor = fine
    stored = draw_scene((200, 120), 1).transpose(Image.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "photo.jpg"
    stored.save(path, quality=95, exif=exif)
    predictor = GroundingPredictor(model, processor, top_k=2)
    result = predictor.predict([str(path)], "a circle")[0]
    assert (result["width"], result["height"]) == (200, 120) and result["image"] == str(path)
    assert result["phrases"] == predictor.predict([load_image(path)], "a circle")[0]["phrases"]
    assert predictor.draw(result, processor.open(str(path))).size == (200, 120)


def test_detection_prompts_fit_the_query_length_and_warn_on_a_name_cut(fine, image_paths):
    model, processor = fine
    names = [f"{c} {s}" for c in ("red", "blue", "green", "yellow", "small", "big") for s in ("star", "circle", "heart")]
    chunks = DetectionPredictor(model, processor, names, chunk_size=40).chunks
    assert len(chunks) > 1  # 18 two-word names do not fit one 40-token prompt
    assert sum(len(c.category_ids) for c in chunks) == len(names)
    assert all(c.input_ids.shape[1] <= processor.query_length for c in chunks)
    assert all(c.positive_map.sum(1).min() > 0 for c in chunks)  # every name has its tokens
    assert [len(c.category_ids) for c in DetectionPredictor(model, processor, names, chunk_size=4).chunks][0] == 4
    long_name = " ".join(["red star"] * 30)
    with pytest.warns(UserWarning, match="longer than 40 tokens and is truncated"):
        predictor = DetectionPredictor(model, processor, ["circle", long_name], threshold=0.0, top=3)
    result = predictor.predict(image_paths[:1])[0]
    assert {d["class"] for d in result["detections"]} <= {"circle", long_name}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DetectionPredictor(model, processor, names)  # no name cut: no warning

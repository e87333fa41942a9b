import io
import json
import tarfile

import pytest
import torch
from PIL import Image

from fibervl.data import (
    CocoDetectionReader, DataError, KarpathyCaptions, MdetrReader, Nlvr2Reader, VqaReader, WebDatasetReader,
)
from fibervl.data.readers import expand_shards


def _write(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the shapes files, read back
def test_shapes_files_read_with_the_real_readers(shapes):
    for split in ("train", "val", "test"):
        caps, vqa, nlvr2 = shapes.captions(split), shapes.vqa(split), shapes.nlvr2(split)
        ground, ref, det = shapes.grounding(split), shapes.refexp(split), shapes.detection(split)
        images = shapes.meta["splits"][split]["images"]
        assert len(caps) == 5 * images and all(len(s.captions) == 5 for s in caps)
        # the train box files leave out the images that show a held-out shape; val and test keep all
        assert len(det) == images if split != "train" else 0 < len(det) < images
        assert len(vqa) > 0 and all(len(s.answers) == 10 for s in vqa)
        assert {s.answer_type for s in vqa} <= {"yes/no", "number", "other"}
        assert len(nlvr2) > 0 and all(s.image2_path.is_file() and s.image_path.is_file() for s in nlvr2)
        for reader in (caps, vqa, ground, ref, det):
            assert not reader.skipped
            assert all(s.image_path.is_file() for s in reader)
        for s in list(ground) + list(ref):
            s.check()
            assert s.num_boxes >= 1 and len(s.tokens_positive) == s.num_boxes
        assert all(s.num_boxes == 1 for s in ref)
    wds = list(shapes.webdataset("train"))
    assert len(wds) == shapes.meta["splits"]["train"]["images"] and wds[0].image.size == (128, 128)


def test_vqa_template_and_official_names(tmp_path):
    q = {"questions": [{"image_id": 123, "question": "what is it?", "question_id": 1230}]}
    a = {"annotations": [{"question_id": 1230, "image_id": 123, "answer_type": "other", "question_type": "what is",
                          "multiple_choice_answer": "cat", "answers": [{"answer": "cat"}] * 9 + [{"answer": "dog"}]}]}
    _write(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", q)
    _write(tmp_path / "v2_mscoco_val2014_annotations.json", a)
    r = VqaReader(tmp_path, "val2014", image_root=tmp_path / "coco")
    assert r[0].image_path == tmp_path / "coco" / "val2014" / "COCO_val2014_000000000123.jpg"
    assert r[0].answers.count("cat") == 9 and r[0].meta["multiple_choice_answer"] == "cat"
    test = VqaReader(tmp_path, "val2014", annotations=False)
    assert test[0].answers == []
    # only COCO 2017's folders on disk: the same image under its id
    (tmp_path / "coco" / "train2017").mkdir(parents=True)
    Image.new("RGB", (8, 6)).save(tmp_path / "coco" / "train2017" / "000000000123.jpg")
    r = VqaReader(tmp_path, "val2014", image_root=tmp_path / "coco")
    assert r[0].image_path == tmp_path / "coco" / "train2017" / "000000000123.jpg"


def test_vqa_invalid_json_and_missing_keys(tmp_path):
    (tmp_path / "v2_OpenEnded_mscoco_x_questions.json").write_text('{"questions": [', encoding="utf-8")
    with pytest.raises(DataError, match=r"questions\.json: invalid JSON"):
        VqaReader(tmp_path, "x", annotations=False)
    _write(tmp_path / "v2_OpenEnded_mscoco_x_questions.json",
           {"questions": [{"image_id": 1, "question_id": 5}, {"image_id": 2, "question": "ok?", "question_id": 6}]})
    with pytest.raises(DataError, match=r"\[record 0 \(question_id 5\)\]: missing key 'question'"):
        VqaReader(tmp_path, "x", annotations=False)
    r = VqaReader(tmp_path, "x", annotations=False, skip_bad=True)
    assert len(r) == 1 and r.skipped.total == 1 and "missing key" in r.skipped.summary()


def test_vqa_question_without_annotation(tmp_path):
    _write(tmp_path / "v2_OpenEnded_mscoco_x_questions.json", {"questions": [{"image_id": 1, "question": "q?", "question_id": 5}]})
    _write(tmp_path / "v2_mscoco_x_annotations.json", {"annotations": []})
    with pytest.raises(DataError, match="no annotation for question_id 5"):
        VqaReader(tmp_path, "x")


def _karpathy(tmp_path, raws):
    return _write(tmp_path / "k.json", {"images": [
        {"filepath": "val2014", "filename": "a.jpg", "split": "test", "cocoid": 9,
         "sentences": [{"raw": r} for r in raws]}]})


def test_karpathy_empty_and_enormous_captions(tmp_path):
    with pytest.raises(DataError, match=r"k\.json \[record 0 \(a\.jpg\) sentence 1\]: empty caption"):
        KarpathyCaptions(_karpathy(tmp_path, ["fine", "   "]), tmp_path, "test")
    r = KarpathyCaptions(_karpathy(tmp_path, ["fine", "   "]), tmp_path, "test", skip_bad=True)
    assert [s.text for s in r] == ["fine"] and r.skipped.total == 1  # the pair is skipped, not the image
    long = "word " * 2000
    r = KarpathyCaptions(_karpathy(tmp_path, [long, "ok 😀 שלום مرحبا"]), tmp_path, "test", max_text_chars=100)
    assert r.truncated == 1 and len(r[0].text) <= 100 and r[1].text == "ok 😀 שלום مرحبا"
    assert r[0].image_path == tmp_path / "val2014" / "a.jpg"


def _karpathy_image(imgid, split, filename, raws, **extra):
    """One image of Karpathy's split file as the published files have it."""
    return {"filename": filename, "imgid": imgid, "split": split, "sentids": list(range(len(raws))), **extra,
            "sentences": [{"tokens": r.lower().strip(" .").split(), "raw": r, "imgid": imgid, "sentid": k}
                          for k, r in enumerate(raws)]}


def test_karpathy_coco_restval_and_flickr_photo_ids(tmp_path):
    coco = _write(tmp_path / "dataset_coco.json", {"dataset": "coco", "images": [
        _karpathy_image(0, "train", "COCO_train2014_000000000009.jpg", ["A cat."], filepath="train2014", cocoid=9),
        _karpathy_image(1, "restval", "COCO_val2014_000000000042.jpg", ["A dog. "], filepath="val2014", cocoid=42),
        _karpathy_image(2, "test", "COCO_val2014_000000000073.jpg", ["A bus."], filepath="val2014", cocoid=73)]})
    train = KarpathyCaptions(coco, tmp_path / "coco", "train")
    assert [s.image_id for s in train] == [9, 42]  # the training split takes restval, ids are cocoid
    assert train[1].image_path == tmp_path / "coco" / "val2014" / "COCO_val2014_000000000042.jpg"
    assert [s.image_id for s in KarpathyCaptions(coco, tmp_path / "coco", "train", include_restval=False)] == [9]
    # only COCO 2017's folders on disk: the same images under their ids, found there
    (tmp_path / "coco" / "val2017").mkdir(parents=True)
    Image.new("RGB", (8, 6)).save(tmp_path / "coco" / "val2017" / "000000000042.jpg")
    train = KarpathyCaptions(coco, tmp_path / "coco", "train")
    assert train[1].image_path == tmp_path / "coco" / "val2017" / "000000000042.jpg"
    assert train[0].image_path == tmp_path / "coco" / "train2014" / "COCO_train2014_000000000009.jpg"  # nowhere: as named
    flickr = _write(tmp_path / "dataset_flickr30k.json", {"dataset": "flickr30k", "images": [
        _karpathy_image(0, "test", "1000092795.jpg", ["Two young guys.", "Two men outside."]),
        _karpathy_image(1, "test", "photo.jpg", ["A view."])]})
    test = KarpathyCaptions(flickr, tmp_path / "flickr30k-images", "test", dataset="flickr30k")
    # Flickr30k has no cocoid: the id is the Flickr photo id of the file name (Karpathy's imgid otherwise)
    assert [img["image_id"] for img in test.images] == [1000092795, 1]
    assert test[0].image_path == tmp_path / "flickr30k-images" / "1000092795.jpg" and test[0].captions == [
        "Two young guys.", "Two men outside."]


def _coco(tmp_path, anns, images=None, cats=None):
    return _write(tmp_path / "inst.json", {
        "images": images or [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 50}],
        "annotations": anns, "categories": cats or [{"id": 3, "name": "cat"}]})


def test_coco_detection_boxes_clipped_and_converted(tmp_path):
    r = CocoDetectionReader(_coco(tmp_path, [{"image_id": 1, "category_id": 3, "bbox": [90, 40, 20, 20]},
                                             {"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4]}]), tmp_path)
    assert torch.equal(r[0].boxes, torch.tensor([[90.0, 40, 100, 50], [1, 2, 4, 6]]))
    assert r[0].category_ids.tolist() == [3, 3]


@pytest.mark.parametrize("ann, problem", [
    ({"image_id": 1, "category_id": 3, "bbox": [200, 10, 5, 5]}, "box outside the image"),
    ({"image_id": 1, "category_id": 3, "bbox": [10, 10, -5, 5]}, "box with negative size"),
    ({"image_id": 1, "category_id": 99, "bbox": [10, 10, 5, 5]}, "unknown category id 99"),
    ({"image_id": 1, "category_id": 3}, "missing key 'bbox'"),
    ({"image_id": 7, "category_id": 3, "bbox": [1, 1, 1, 1]}, "image_id 7 is not in images"),
    ({"image_id": 1, "category_id": 3, "bbox": [1, "x", 1, 1]}, "bad box"),
])
def test_coco_detection_bad_annotations(tmp_path, ann, problem):
    good = {"image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "id": 1}
    path = _coco(tmp_path, [good, {**ann, "id": 2}])
    with pytest.raises(DataError, match=rf"inst\.json \[record annotation 1 \(id 2\)\]: {problem}"):
        CocoDetectionReader(path, tmp_path)
    r = CocoDetectionReader(path, tmp_path, skip_bad=True)
    assert r.skipped.total == 1 and r[0].num_boxes == 1  # the image keeps its good box


def test_lvis_images_without_file_name(tmp_path):
    images = [{"id": 5, "coco_url": "http://host/train2017/000000000005.jpg", "width": 10, "height": 10}]
    r = CocoDetectionReader(_coco(tmp_path, [], images=images), tmp_path)
    assert r[0].image_path == tmp_path / "train2017" / "000000000005.jpg"


def _mdetr(tmp_path, caption, spans, bbox=(1, 1, 5, 5)):
    return _write(tmp_path / "m.json", {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 20, "height": 20, "caption": caption, "original_img_id": 77}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": list(bbox), "tokens_positive": spans}],
        "categories": [{"id": 1, "name": "thing"}]})


def test_mdetr_reader_and_bad_spans(tmp_path):
    r = MdetrReader(_mdetr(tmp_path, "a red star", [[0, 10]]), tmp_path)
    assert r[0].tokens_positive == [[(0, 10)]] and r[0].image_id == 77
    with pytest.raises(DataError, match=r"m\.json \[record image 0 \(id 1\) annotation 0\]: tokens_positive span \[0, 11\] outside"):
        MdetrReader(_mdetr(tmp_path, "a red star", [[0, 11]]), tmp_path)
    with pytest.raises(DataError, match="empty caption"):
        MdetrReader(_mdetr(tmp_path, "", [[0, 1]]), tmp_path)
    with pytest.raises(DataError, match="caption too long"):
        MdetrReader(_mdetr(tmp_path, "x" * 50, [[0, 1]]), tmp_path, max_text_chars=20)
    with pytest.raises(DataError, match="box outside the image"):
        MdetrReader(_mdetr(tmp_path, "a red star", [[0, 1]], bbox=(30, 30, 2, 2)), tmp_path)
    r = MdetrReader(_mdetr(tmp_path, "a red star", [[0, 11]]), tmp_path, skip_bad=True)
    assert len(r) == 0 and r.skipped.total == 1


def test_mdetr_box_the_caption_does_not_name_is_kept_with_no_positive_token(tmp_path):
    """MDETR / GLIP files may hold a box with an empty tokens_positive: a ground-truth box that no
    word of the caption names. It stays (a box for the detector), and its positive-map row is zero."""
    from fibervl.data.collate import build_positive_map

    r = MdetrReader(_mdetr(tmp_path, "a red star", []), tmp_path)
    assert r[0].num_boxes == 1 and r[0].tokens_positive == [[]]
    pm = build_positive_map([(0, 0), (0, 1), (2, 5), (6, 10), (0, 0)], r[0].tokens_positive, 5)
    assert pm.shape == (1, 5) and not pm.any()


def test_mdetr_sizes_as_strings_and_bad_sizes(tmp_path):
    path = _mdetr(tmp_path, "a red star", [[0, 10]])
    data = json.loads(path.read_text())
    data["images"][0]["height"] = "20"  # as in MDETR's Flickr30k files
    _write(path, data)
    assert MdetrReader(path, tmp_path)[0].height == 20
    data["images"][0]["height"] = "-3"
    _write(path, data)
    with pytest.raises(DataError, match="'height' should be a positive integer"):
        MdetrReader(path, tmp_path)


def test_mdetr_rtl_and_emoji_spans(tmp_path):
    caption = "כוכב אדום 🌟 next to نجمة"
    s = caption.index("نجمة")
    r = MdetrReader(_mdetr(tmp_path, caption, [[s, s + 4]]), tmp_path)
    a, b = r[0].tokens_positive[0][0]
    assert r[0].text[a:b] == "نجمة"


def test_nlvr2_layout_and_bad_lines(tmp_path):
    lines = [json.dumps({"identifier": "train-10-1-0", "sentence": "one dog.", "label": "True", "directory": 3}),
             "{broken", json.dumps({"identifier": "train-11-0-1", "sentence": "x", "label": "maybe"}), ""]
    (tmp_path / "train.json").write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"train\.json \[record line 2\]: invalid JSON"):
        Nlvr2Reader(tmp_path / "train.json", tmp_path / "images")
    r = Nlvr2Reader(tmp_path / "train.json", tmp_path / "images", skip_bad=True)
    assert len(r) == 1 and r.skipped.total == 2
    s = r[0]
    assert s.label is True and s.image_path == tmp_path / "images" / "train" / "3" / "train-10-1-img0.png"
    assert s.image2_path.name == "train-10-1-img1.png"


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _jpg():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(buf, "JPEG")
    return buf.getvalue()


def test_webdataset_reader_and_bad_samples(tmp_path):
    _tar(tmp_path / "s-000.tar", [("a.jpg", _jpg()), ("a.txt", "a photo".encode()),
                                  ("b.jpg", _jpg()),  # no caption
                                  ("c.jpg", b"not a jpeg"), ("c.txt", b"broken image"),
                                  ("d.txt", b"no image")])
    _tar(tmp_path / "s-001.tar", [("e.png", _jpg()), ("e.txt", "שלום 🎉".encode())])
    shards = str(tmp_path / "s-{000..001}.tar")
    assert [p.name for p in expand_shards(shards)] == ["s-000.tar", "s-001.tar"]
    with pytest.raises(DataError, match=r"s-000\.tar \[record b\]: sample has no caption"):
        list(WebDatasetReader(shards))
    r = WebDatasetReader(shards, skip_bad=True)
    got = list(r)
    assert [s.text for s in got] == ["a photo", "שלום 🎉"]
    assert r.skipped.total == 3 and got[0].image.mode == "RGB"


def test_webdataset_captions_in_img2dataset_json_and_other_image_types(tmp_path):
    """img2dataset writes KEY.json with the caption beside KEY.txt; some shards keep the
    caption in the .json only, and images may be .jpeg / .png / .webp."""
    png, webp = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (6, 4), (200, 0, 0)).save(png, "PNG")
    Image.new("RGB", (6, 4), (0, 200, 0)).save(webp, "WEBP")
    meta = {"url": "http://x/1.jpg", "key": "000000001", "status": "success", "error_message": None,
            "width": 8, "height": 8, "caption": " a red cat "}
    _tar(tmp_path / "00000.tar", [
        ("000000000.jpg", _jpg()), ("000000000.txt", b"from the txt"),
        ("000000000.json", json.dumps({**meta, "caption": "from the json"}).encode()),
        ("000000001.jpeg", _jpg()), ("000000001.json", json.dumps(meta).encode()),
        ("000000002.png", png.getvalue()), ("000000002.json", json.dumps({**meta, "caption": "a green square"}).encode()),
        ("000000003.webp", webp.getvalue()), ("000000003.txt", b"a green webp"),
        ("000000004.jpg", _jpg()), ("000000004.json", json.dumps({**meta, "caption": None}).encode()),
    ])
    r = WebDatasetReader(tmp_path / "00000.tar", skip_bad=True)
    got = list(r)
    assert [s.text for s in got] == ["from the txt", "a red cat", "a green square", "a green webp"]
    assert [s.image.size for s in got[2:]] == [(6, 4), (6, 4)]
    with pytest.raises(DataError, match=r"00000\.tar \[record 000000004\]: sample has no caption member"):
        list(WebDatasetReader(tmp_path / "00000.tar"))

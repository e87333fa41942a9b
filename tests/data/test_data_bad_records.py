"""Bad records are never dropped or mis-paired silently: each is an error naming the file and the
record, or (when skipping is asked for) is left out, warned about and counted per file and reason."""

import json
import logging

import pytest
from PIL import Image

from fibervl.data import (
    CocoCaptionsReader, CocoDetectionReader, DataError, KarpathyCaptions, MdetrReader, Nlvr2Reader, Processor, Sample,
    VqaReader,
)
from fibervl.data.errors import SkipLog, skip_report


def _write(path, obj, bom=False):
    path.write_text(("\ufeff" if bom else "") + json.dumps(obj), encoding="utf-8")
    return path


# ---------------------------------------------------------------- VQAv2: pair by question id
def _vqa(tmp_path, questions, annotations):
    _write(tmp_path / "v2_OpenEnded_mscoco_x_questions.json", {"questions": questions})
    _write(tmp_path / "v2_mscoco_x_annotations.json", {"annotations": annotations})


def _q(qid, image_id=1):
    return {"image_id": image_id, "question": f"question {qid}?", "question_id": qid}


def _a(qid, answer="yes", image_id=1):
    return {"question_id": qid, "image_id": image_id, "answers": [{"answer": answer}] * 10}


def test_vqa_annotation_without_its_question_is_a_bad_record(tmp_path):
    _vqa(tmp_path, [_q(1)], [_a(1), _a(2)])
    with pytest.raises(DataError, match=r"annotations\.json \[record annotation 1\]: annotation of question_id 2 "
                                        r"has no question in v2_OpenEnded_mscoco_x_questions\.json"):
        VqaReader(tmp_path, "x")
    r = VqaReader(tmp_path, "x", skip_bad=True)
    assert [s.sample_id for s in r] == ["1"] and r.skipped.total == 1


@pytest.mark.parametrize("where", ["questions", "annotations"])
def test_vqa_duplicate_question_id_is_a_bad_record(tmp_path, where):
    questions, annotations = [_q(1), _q(2)], [_a(1), _a(2, "no")]
    if where == "questions":
        questions.append(_q(2, image_id=7))
    else:
        annotations.append(_a(2, "maybe"))  # the second set of answers would overwrite the first
    _vqa(tmp_path, questions, annotations)
    with pytest.raises(DataError, match=rf"{where}\.json \[record .*\]: duplicate question_id 2 \(records 1 and 2\)"):
        VqaReader(tmp_path, "x")
    r = VqaReader(tmp_path, "x", skip_bad=True)
    assert [s.sample_id for s in r] == ["1"] and r.skipped.total == 1 and "duplicate question_id" in r.skipped.summary()


# ---------------------------------------------------------------- Karpathy: the pair is the unit
def test_karpathy_skips_the_empty_caption_not_its_image(tmp_path):
    path = _write(tmp_path / "k.json", {"images": [
        {"filepath": "val2014", "filename": "a.jpg", "split": "test", "cocoid": 9,
         "sentences": [{"raw": "a dog"}, {"raw": "  "}, {"raw": "a brown dog"}, {"tokens": []}]}]})
    r = KarpathyCaptions(path, tmp_path, "test", skip_bad=True)
    assert [s.text for s in r] == ["a dog", "a brown dog"] and r.skipped.total == 2
    assert r[0].captions == ["a dog", "a brown dog"] and r.images[0]["captions"] == ["a dog", "a brown dog"]
    paths, texts, t2i, i2t = r.retrieval_lists()
    assert texts == ["a dog", "a brown dog"] and t2i == [0, 0] and i2t == [[0, 1]]


# ---------------------------------------------------------------- COCO captions
def _coco_captions(tmp_path, annotations, images=None, bom=False):
    images = images if images is not None else [
        {"id": 9, "file_name": "000000000009.jpg", "width": 640, "height": 480},
        {"id": 25, "file_name": "000000000025.jpg", "width": 640, "height": 426}]
    return _write(tmp_path / "captions_val2017.json", {"info": {}, "licenses": [], "images": images,
                                                       "annotations": annotations}, bom=bom)


def test_coco_captions_reader(tmp_path):
    anns = [{"id": 1, "image_id": 9, "caption": "A plate of food."}, {"id": 2, "image_id": 25, "caption": "A giraffe."},
            {"id": 3, "image_id": 9, "caption": "Broccoli and meat."}]
    r = CocoCaptionsReader(_coco_captions(tmp_path, anns), tmp_path / "val2017")
    assert [s.text for s in r] == ["A plate of food.", "Broccoli and meat.", "A giraffe."]
    assert r[0].image_path == tmp_path / "val2017" / "000000000009.jpg" and r[0].image_id == 9
    assert r[0].sample_id == "1" and r[0].captions == ["A plate of food.", "Broccoli and meat."]
    paths, texts, t2i, i2t = r.retrieval_lists()
    assert [p.name for p in paths] == ["000000000009.jpg", "000000000025.jpg"] and t2i == [0, 0, 1]
    assert i2t == [[0, 1], [2]] and len(texts) == 3


@pytest.mark.parametrize("ann, problem", [
    ({"id": 5, "image_id": 9, "caption": " "}, r"\[record annotation 1 \(id 5\)\]: empty caption"),
    ({"id": 5, "image_id": 77, "caption": "x"}, r"\[record annotation 1 \(id 5\)\]: image_id 77 is not in images"),
    ({"id": 5, "caption": "x"}, r"\[record annotation 1 \(id 5\)\]: missing key 'image_id'"),
    ({"id": 1, "image_id": 9, "caption": "x"}, r"\[record annotation 1 \(id 1\)\]: duplicate annotation id 1"),
])
def test_coco_captions_bad_annotations(tmp_path, ann, problem):
    path = _coco_captions(tmp_path, [{"id": 1, "image_id": 9, "caption": "a cat"}, ann,
                                     {"id": 7, "image_id": 25, "caption": "a dog"}])
    with pytest.raises(DataError, match=r"captions_val2017\.json " + problem):
        CocoCaptionsReader(path, tmp_path)
    r = CocoCaptionsReader(path, tmp_path, skip_bad=True)
    assert [s.text for s in r] == ["a cat", "a dog"] and r.skipped.total == 1


def test_coco_captions_image_without_captions_and_wrong_file(tmp_path):
    path = _coco_captions(tmp_path, [{"id": 1, "image_id": 9, "caption": "a cat"}])
    with pytest.raises(DataError, match=r"\[record image 1 \(id 25\)\]: image has no captions"):
        CocoCaptionsReader(path, tmp_path)
    assert len(CocoCaptionsReader(path, tmp_path, skip_bad=True).images) == 1
    # a detection file given where captions are expected is named as such
    instances = _write(tmp_path / "instances_val2017.json", {"images": [], "annotations": [{"id": 1, "image_id": 9,
                                                                                            "bbox": [0, 0, 1, 1]}]})
    with pytest.raises(DataError, match=r"instances_val2017\.json: no record has a 'caption' key .*not a COCO captions file"):
        CocoCaptionsReader(instances, tmp_path)


# ---------------------------------------------------------------- a UTF-8 byte order mark
def test_every_json_reader_accepts_a_byte_order_mark(tmp_path):
    k = _write(tmp_path / "k.json", {"images": [{"filename": "a.jpg", "split": "test", "sentences": [{"raw": "x"}]}]},
               bom=True)
    assert len(KarpathyCaptions(k, tmp_path, "test")) == 1
    assert len(CocoCaptionsReader(_coco_captions(tmp_path, [{"id": 1, "image_id": 9, "caption": "x"},
                                                            {"id": 2, "image_id": 25, "caption": "y"}], bom=True),
                                  tmp_path)) == 2
    _write(tmp_path / "v2_OpenEnded_mscoco_x_questions.json", {"questions": [_q(1)]}, bom=True)
    _write(tmp_path / "v2_mscoco_x_annotations.json", {"annotations": [_a(1)]}, bom=True)
    assert len(VqaReader(tmp_path, "x")) == 1
    m = _write(tmp_path / "m.json", {"images": [{"id": 1, "file_name": "a.jpg", "width": 9, "height": 9, "caption": "x"}],
                                     "annotations": []}, bom=True)
    assert len(MdetrReader(m, tmp_path)) == 1
    d = _write(tmp_path / "d.json", {"images": [{"id": 1, "file_name": "a.jpg", "width": 9, "height": 9}],
                                     "annotations": [], "categories": []}, bom=True)
    assert len(CocoDetectionReader(d, tmp_path)) == 1
    line = json.dumps({"identifier": "dev-1-0-0", "sentence": "one dog.", "label": "True"})
    (tmp_path / "dev.json").write_text("\ufeff" + line + "\n" + line.replace("dev-1-0-0", "dev-1-0-1"), encoding="utf-8")
    assert len(Nlvr2Reader(tmp_path / "dev.json", tmp_path)) == 2


# ---------------------------------------------------------------- warnings and the summary
def test_skipped_records_are_warned_one_by_one_then_counted(tmp_path, caplog):
    anns = [{"id": i, "image_id": 9, "caption": "" if i % 2 else "a cat"} for i in range(30)]
    anns.append({"id": 99, "image_id": 5, "caption": "a dog"})
    path = _coco_captions(tmp_path, anns, images=[{"id": 9, "file_name": "9.jpg"}])
    with caplog.at_level(logging.WARNING, logger="fibervl.data"), skip_report() as report:
        r = CocoCaptionsReader(path, tmp_path, skip_bad=True)
        CocoCaptionsReader(path, tmp_path, skip_bad=True)  # read again (each evaluation does): not counted twice
    assert len(r) == 15 and r.skipped.total == 16
    lines = [rec.getMessage() for rec in caplog.records]
    singles = [line for line in lines if line.startswith("skipped bad record")]
    assert len(singles) == SkipLog.warn_first and "captions_val2017.json [record annotation 1 (id 1)]: empty caption" in singles[0]
    assert sum("the rest are counted, not listed" in line for line in lines) == 1
    summary = report.summary()
    assert "16 bad records skipped" in summary
    assert "captions_val2017.json: 15 empty caption, 1 image_id N is not in images" in summary
    assert lines[-1] == summary  # the report ends with the summary


def test_nothing_skipped_says_so_when_skipping_was_on(tmp_path, caplog):
    path = _coco_captions(tmp_path, [{"id": 1, "image_id": 9, "caption": "a"}, {"id": 2, "image_id": 25, "caption": "b"}])
    with caplog.at_level(logging.INFO, logger="fibervl.data"), skip_report() as report:
        CocoCaptionsReader(path, tmp_path, skip_bad=True)
    assert report.summary() == "skipping bad records: none found"
    with skip_report() as report:
        CocoCaptionsReader(path, tmp_path)
    assert report.summary() == ""  # skipping was not asked for: nothing to report


# ---------------------------------------------------------------- images held in memory
def test_processor_converts_an_in_memory_image_like_a_file(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # red, fully transparent
    out = Processor()(Sample(sample_id="0", image_id=0, image=rgba))
    assert out.pixel_values.shape == (3, 8, 8)
    white = Processor()(Sample(sample_id="1", image_id=1, image=Image.new("RGB", (8, 8), "white")))
    assert (out.pixel_values - white.pixel_values).abs().max() < 1e-6  # composited on white like load_image


# ---------------------------------------------------------------- the wrong file, and detection
def test_a_file_of_another_format_is_one_error_even_when_skipping(tmp_path):
    captions = _coco_captions(tmp_path, [{"id": 1, "image_id": 9, "caption": "a cat"}])
    with pytest.raises(DataError, match=r"captions_val2017\.json: no record has a 'sentences' key .*not a Karpathy"):
        KarpathyCaptions(captions, tmp_path, "val", skip_bad=True)  # not: every image skipped, nothing read
    detection = _write(tmp_path / "instances.json", {"images": [{"id": 1, "file_name": "a.jpg", "width": 9, "height": 9}],
                                                     "annotations": [], "categories": []})
    with pytest.raises(DataError, match=r"instances\.json: no record has a 'caption' key .*not an MDETR annotation"):
        MdetrReader(detection, tmp_path, skip_bad=True)


def test_detection_duplicate_image_id_and_crowd_boxes(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "width": 20, "height": 20},
              {"id": 1, "file_name": "b.jpg", "width": 20, "height": 20}]
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [8, 8, 5, 5], "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [40, 40, 5, 5]}]
    path = _write(tmp_path / "inst.json", {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "cat"}]})
    with pytest.raises(DataError, match=r"inst\.json \[record image 1 \(id 1\)\]: duplicate image id 1"):
        CocoDetectionReader(path, tmp_path)
    r = CocoDetectionReader(path, tmp_path, skip_bad=True)
    assert len(r) == 1 and r[0].image_path.name == "a.jpg" and r[0].num_boxes == 1 and r.skipped.total == 2
    gt = r.ground_truth()  # what evaluation scores against: accepted boxes, crowd ones as COCO's ignore regions
    assert [a["id"] for a in gt["annotations"]] == [1, 2] and [i["file_name"] for i in gt["images"]] == ["a.jpg"]


def test_mdetr_box_of_no_record_and_duplicate_record_ids(tmp_path):
    image = {"id": 1, "file_name": "a.jpg", "width": 20, "height": 20, "caption": "a red star"}
    box = {"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "tokens_positive": [[0, 10]]}
    path = _write(tmp_path / "m.json", {"images": [image, {**image, "file_name": "b.jpg"}],
                                        "annotations": [box, {**box, "image_id": 2}], "categories": [{"id": 1}]})
    with pytest.raises(DataError, match=r"m\.json \[record image 1 \(id 1\)\]: duplicate image id 1 \(first: image 0\)"):
        MdetrReader(path, tmp_path)
    r = MdetrReader(path, tmp_path, skip_bad=True)
    assert len(r) == 1 and r[0].num_boxes == 1 and r.skipped.total == 2
    assert any("[record annotation 1]: image_id 2 is not in images" in e for e in r.skipped.examples)


def test_images_skipped_in_loader_workers_are_in_the_summary(tmp_path):
    """A broken image found by a DataLoader worker process is counted in the run's summary."""
    from torch.utils.data import DataLoader

    from fibervl.data import ProcessedDataset, Processor, Sample

    samples = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        if i in (1, 4):
            path.write_bytes(b"not an image")
        else:
            Image.new("RGB", (8, 8), "red").save(path)
        samples.append(Sample(sample_id=str(i), image_id=i, image_path=path, text="a"))
    data = ProcessedDataset(samples, Processor(skip_bad=True))
    with skip_report() as report:
        loader = DataLoader(data, batch_size=2, num_workers=2, collate_fn=lambda items: [x for x in items if x is not None])
        kept = sum(len(batch) for batch in loader)
        assert kept == 4
        assert report.total == 2
        summary = report.summary()
    assert "2 bad records skipped" in summary and "1.png" in summary and "4.png" in summary

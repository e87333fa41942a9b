"""Bad input to the fine-grained commands: odd and broken images given to ``predict``, data sets
without held-out classes, annotations the reader rejected. Never a silently wrong answer."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fibervl.tasks.grounding as grounding
from fibervl.cli import main
from fibervl.data import Tokenizer
from fibervl.data.shapes import ShapesDataset
from fibervl.modeling.factory import fit_to_tokenizer
from fibervl.modeling.fiber import FiberModel
from fibervl.testing.configs import micro_detector_config


@pytest.fixture(scope="module")
def fine_model(shapes_tiny, tmp_path_factory):
    """An untrained micro grounding detector: what it predicts does not matter here, only where."""
    out = tmp_path_factory.mktemp("fine_model")
    fine = micro_detector_config()
    torch.manual_seed(0)
    FiberModel(fit_to_tokenizer(fine, Tokenizer.from_pretrained(shapes_tiny / "tokenizer"))).save_pretrained(out)
    return out


def _predict(fine_model, shapes_tiny, image, *extra):
    return main(["predict", "detect", "--model", str(fine_model), "--tokenizer", str(shapes_tiny / "tokenizer"),
                 "--image", str(image), "--classes", "star,circle", *extra])


def _result(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_predict_scales_a_16_bit_image_instead_of_whitening_it(fine_model, shapes_tiny, tmp_path, capsys):
    image = tmp_path / "g16.png"
    Image.fromarray(np.full((96, 128), 32768, dtype=np.uint16)).save(image)
    out = tmp_path / "out.png"
    assert _predict(fine_model, shapes_tiny, image, "--threshold", "2", "--out", str(out)) == 0  # no box drawn
    assert abs(Image.open(out).getpixel((5, 5))[0] - 128) <= 1


def test_predict_boxes_are_in_the_exif_corrected_frame(fine_model, shapes_tiny, tmp_path, capsys):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 128x96, shown turned 90 degrees clockwise: 96 wide, 128 high
    image = tmp_path / "turned.jpg"
    Image.new("RGB", (128, 96), (90, 120, 200)).save(image, "JPEG", exif=exif.tobytes())
    out = tmp_path / "out.png"
    # grounding ranks every anchor, so an untrained model still returns boxes
    assert main(["predict", "ground", "--model", str(fine_model), "--tokenizer", str(shapes_tiny / "tokenizer"),
                 "--image", str(image), "--text", "a red star", "--top-k", "20", "--out", str(out)]) == 0
    boxes = [b for phrase in _result(capsys)["phrases"] for b in phrase["boxes"]]
    assert Image.open(out).size == (96, 128)
    assert boxes and all(0 <= x0 <= x1 <= 96 and 0 <= y0 <= y1 <= 128 for x0, y0, x1, y1 in boxes)
    assert max(b[3] for b in boxes) > 96  # the boxes use the full displayed height


def test_predict_composites_transparent_pixels_on_white(fine_model, shapes_tiny, tmp_path):
    image = tmp_path / "alpha.png"
    Image.new("RGBA", (128, 128), (255, 0, 0, 0)).save(image)  # red, fully transparent
    out = tmp_path / "out.png"
    assert _predict(fine_model, shapes_tiny, image, "--threshold", "2", "--out", str(out)) == 0
    assert Image.open(out).getpixel((5, 5)) == (255, 255, 255)


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (200, 200), (9, 99, 199)).save(buf, "JPEG")
    return buf.getvalue()[:300]


@pytest.mark.parametrize("content, problem", [
    (b"", "empty image file"), (b"hello, world\n", "not an image file"), (_truncated_jpeg(), "corrupt or truncated"),
])
def test_predict_names_a_broken_image_file(fine_model, shapes_tiny, tmp_path, capsys, content, problem):
    image = tmp_path / "broken.jpg"
    image.write_bytes(content)
    assert _predict(fine_model, shapes_tiny, image, "--out", str(tmp_path / "o.png")) == 1
    said = "".join(capsys.readouterr())
    assert str(image) in said and problem in said and "Traceback" not in said


def test_predict_writes_to_its_own_run_directory(fine_model, shapes_tiny, tmp_path, capsys, monkeypatch):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    image = pictures / "photo.png"
    Image.new("RGB", (128, 128), (30, 160, 30)).save(image)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert _predict(fine_model, shapes_tiny, image, "--threshold", "0", "--top", "1") == 0
    said = "".join(capsys.readouterr())
    written = list((work / "runs" / "predict-detect").rglob("*.png"))
    assert written and sorted(p.name for p in pictures.iterdir()) == ["photo.png"]
    assert str(written[0].relative_to(work)) in said  # and it says where


def test_predict_without_class_names_says_so(fine_model, shapes_tiny, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.new("RGB", (128, 128)).save(image)
    assert main(["predict", "detect", "--model", str(fine_model), "--tokenizer", str(shapes_tiny / "tokenizer"),
                 "--image", str(image), "--classes", " , ", "--out", str(tmp_path / "o.png")]) == 1
    err = capsys.readouterr().err
    assert "--classes" in err and "torch.cat" not in err


def test_evaluate_detect_on_a_data_set_without_held_out_classes(fine_model, shapes_tiny, tmp_path, capsys):
    pytest.importorskip("pycocotools")
    root = tmp_path / "all_seen"
    root.mkdir()
    for child in shapes_tiny.iterdir():
        if child.name not in ("dataset.json", "detection"):
            (root / child.name).symlink_to(child)
    # every class seen: none held out, each named in the detection files
    meta = json.loads((shapes_tiny / "dataset.json").read_text(encoding="utf-8"))
    meta["held_out_shapes"] = []
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    (root / "detection").mkdir()
    for split in ("train", "val", "test"):
        data = json.loads((shapes_tiny / "detection" / f"instances_{split}.json").read_text(encoding="utf-8"))
        data["categories"] = [{"id": k + 1, "name": name} for k, name in enumerate(meta["shapes"])]
        (root / "detection" / f"instances_{split}.json").write_text(json.dumps(data), encoding="utf-8")
    assert main(["evaluate", "detect", f"data.root={root}", f"model.init={fine_model}", "data.num_eval=1",
                 "data.chunk_size=4", "data.eval_batch_size=1"]) == 0
    captured = capsys.readouterr()
    assert "det_AP=" in captured.out and "zs_AP" not in captured.out
    assert "no held-out classes" in captured.err


def test_detection_ap_is_computed_on_the_boxes_the_reader_accepted(shapes_tiny, tmp_path, monkeypatch, eval_batches):
    """Perfect detections score AP 100 even when the file holds a box the reader skipped."""
    pytest.importorskip("pycocotools")
    shapes = ShapesDataset(shapes_tiny)
    source = shapes.detection("val")
    data = json.loads(source.file.read_text(encoding="utf-8"))
    first = data["annotations"][0]
    data["annotations"].append({**first, "id": 10**6, "bbox": [500.0, 10.0, 5.0, 5.0]})  # outside the image
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    reader = type(source)(path, source.image_root, skip_bad=True)
    assert reader.skipped.total == 1
    current = eval_batches

    def oracle(model, images, image_sizes, chunks, postprocessor=None):
        batch = current["batch"]
        return [(boxes, torch.ones(len(boxes)), s.category_ids) for s, boxes in zip(batch.samples, batch.boxes)]

    monkeypatch.setattr(grounding, "detect_with_prompt", oracle)
    tok = Tokenizer.from_pretrained(shapes.tokenizer_dir)
    metrics = grounding.evaluate_detection(nn.Linear(1, 1), tok, reader, sorted(reader.categories), 128, 40,
                                           chunk_size=4)
    assert metrics["AP"] == pytest.approx(100.0) and metrics["images"] == len(reader)

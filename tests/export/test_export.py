"""``fibervl export onnx``: the graphs onnxruntime runs give PyTorch's outputs at other batch sizes
and text lengths than the trace's, and the command fails clearly."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytest.importorskip("onnx", reason="ONNX export needs onnx: pip install 'fibervl[export]'")
ort = pytest.importorskip("onnxruntime", reason="the ONNX checks need onnxruntime: pip install 'fibervl[export]'")

from fibervl.cli import main  # noqa: E402
from fibervl.config import get_preset  # noqa: E402
from fibervl.export.onnx import check_part, example_inputs, export_onnx  # noqa: E402
from fibervl.boxes import clip_boxes_to_image  # noqa: E402
from fibervl.modeling.detection.postprocess import GroundingPostProcessor  # noqa: E402
from fibervl.modeling.fiber import FiberModel  # noqa: E402
from fibervl.testing.models import set_fusion_gates  # noqa: E402

TOL = 1e-4


def _saved(tmp_path_factory, preset: str, name: str) -> tuple[FiberModel, object]:
    """A random ``preset`` model with half-open fusion gates (cross-attention in the outputs),
    saved as a model directory."""
    torch.manual_seed(0)
    model = set_fusion_gates(FiberModel(get_preset(preset)), 0.5).eval()
    directory = tmp_path_factory.mktemp(name)
    model.save_pretrained(directory)
    return model, directory


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def dual(tmp_path_factory):
    model, directory = _saved(tmp_path_factory, "fiber-tiny", "tiny")
    assert main(["export", "onnx", "--model", str(directory)]) == 0  # both parts, checked, into DIR/onnx
    return model, directory / "onnx"


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    model, directory = _saved(tmp_path_factory, "fiber-tiny-fine", "tiny_fine")
    path = directory / "det.onnx"
    assert main(["export", "onnx", "--model", str(directory), "--part", "detector", "--out", str(path)]) == 0
    return model, path


def test_image_encoder_matches_pytorch_at_batch_1_and_8(dual):
    model, out = dual
    session = _session(out / "image_encoder.onnx")
    assert session.get_inputs()[0].shape == ["batch", 3, 128, 128]
    for batch in (1, 8):
        images = torch.randn(batch, 3, 128, 128, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model.encode_image(images).numpy()
        got = session.run(["embedding"], {"images": images.numpy()})[0]
        assert got.shape == (batch, 128)
        assert abs(got - expected).max() < TOL


def test_text_encoder_matches_pytorch_at_any_batch_and_length(dual):
    model, out = dual
    session = _session(out / "text_encoder.onnx")
    assert session.get_inputs()[0].shape == ["batch", "tokens"]
    for batch, tokens in ((1, 2), (8, 40), (3, 17)):
        ids, mask = example_inputs(model, "text", batch, tokens, 128, seed=batch)
        with torch.no_grad():
            expected = model.encode_text(ids, mask).numpy()
        got = session.run(["embedding"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        assert got.shape == (batch, 128)
        assert abs(got - expected).max() < TOL
    # a padded row embeds as its unpadded text does: the mask is a real input, not a constant
    ids, mask = example_inputs(model, "text", 2, 12, 128)
    short = int(mask[1].sum())
    padded = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0][1]
    alone = session.run(None, {"input_ids": ids[1:, :short].numpy(), "attention_mask": mask[1:, :short].numpy()})[0][0]
    assert abs(padded - alone).max() < TOL


def test_text_encoder_with_bigram_embeddings_matches_pytorch(tmp_path):
    """The hashed (previous token, token) rows export too (the hash is integer arithmetic in the graph)."""
    import dataclasses

    tiny = get_preset("fiber-tiny")
    torch.manual_seed(0)
    model = FiberModel(tiny.replace(text=dataclasses.replace(tiny.text, bigram_buckets=512))).eval()
    path = export_onnx(model, "text", tmp_path / "text.onnx")
    ids, mask = example_inputs(model, "text", 3, 17, 128, seed=3)
    with torch.no_grad():
        expected = model.encode_text(ids, mask).numpy()
    got = _session(path).run(["embedding"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    assert abs(got - expected).max() < TOL


def test_files_carry_their_metadata(dual):
    import onnx

    model, out = dual
    meta = {p.key: p.value for p in onnx.load(str(out / "text_encoder.onnx")).metadata_props}
    assert meta["fibervl.part"] == "text" and meta["fibervl.model"] == "fiber-tiny"
    assert int(meta["fibervl.max_tokens"]) == 40 and int(meta["fibervl.embedding_dim"]) == 128
    assert float(meta["fibervl.itc_temperature"]) == pytest.approx(float(model.temperature.detach()))


def test_detector_outputs_match_pytorch_per_anchor(detector):
    model, path = detector
    session = _session(path)
    for batch, tokens in ((1, 3), (8, 40)):
        images, ids, mask = example_inputs(model, "detector", batch, tokens, 128, seed=batch)
        boxes, scores, ctr = session.run(None, {"images": images.numpy(), "input_ids": ids.numpy(),
                                                "attention_mask": mask.numpy()})
        with torch.no_grad():
            out = model.detect(images, ids, mask)
        h = out.head
        anchors = torch.cat(out.anchors)
        assert boxes.shape == (batch, anchors.shape[0], 4) and scores.shape == (batch, anchors.shape[0], tokens)
        # the layout the post-processor uses: levels finest first, locations row-major
        deltas = torch.cat([r.permute(0, 2, 3, 1).reshape(batch, -1, 4) for r in h.bbox_reg], dim=1)
        coder = model.detector.postprocessor.box_coder
        for b in range(batch):
            assert abs(boxes[b] - coder.decode(deltas[b], anchors).numpy()).max() < TOL  # pixels at 128 px
        assert abs(scores - torch.cat(h.dot_product_logits, 1).sigmoid().numpy()).max() < TOL
        assert abs(ctr - torch.cat([c.flatten(1) for c in h.centerness], 1).sigmoid().numpy()).max() < TOL


def test_detector_outputs_give_the_postprocessors_best_box(detector):
    """The recipe of docs/export.md: class score = mean token score, times centerness, square
    root; the best box, clipped to the image, is the post-processor's first detection."""
    model, path = detector
    images, ids, mask = example_inputs(model, "detector", 2, 10, 128, seed=5)
    boxes, scores, ctr = (torch.from_numpy(a) for a in _session(path).run(
        None, {"images": images.numpy(), "input_ids": ids.numpy(), "attention_mask": mask.numpy()}))
    phrase = torch.zeros(1, 10, dtype=torch.bool)
    phrase[0, 2:4] = True  # a phrase of two tokens
    post = GroundingPostProcessor(pre_nms_thresh=0.0, detections_per_img=0)
    with torch.no_grad():
        out = model.detect(images, ids, mask)
    expected = post(out.head.bbox_reg, out.head.centerness, out.head.dot_product_logits, out.anchors,
                    [(128, 128)] * 2, phrase)
    offset = post.box_coder.pixel_offset
    for b in range(2):
        score = (scores[b][:, phrase[0]].mean(-1) * ctr[b]).sqrt()
        best = int(score.argmax())
        assert score[best].item() == pytest.approx(expected[b].scores[0].item(), abs=TOL)
        box = clip_boxes_to_image(boxes[b, best:best + 1], (128, 128), offset)[0]
        assert torch.allclose(box, expected[b].boxes[0], atol=TOL)


def test_export_leaves_the_model_in_eval_mode(tmp_path):
    """The exporter restores its module's training flag afterwards: a wrapper left in training
    mode would switch dropout on in the model (fiber-base's text embeddings then moved by 0.06)."""
    model = FiberModel(get_preset("fiber-tiny")).eval()
    export_onnx(model, "text", tmp_path / "text.onnx")
    assert not any(m.training for m in model.modules())


def test_unknown_part_and_missing_detector_are_clear_errors(capsys, tmp_path):
    model = FiberModel(get_preset("fiber-tiny"))
    with pytest.raises(ValueError, match="unknown part 'mask'; parts: image, text, detector"):
        check_part(model, "mask")
    with pytest.raises(SystemExit):
        main(["export", "onnx", "--model", "fiber-tiny", "--part", "mask"])
    assert "invalid choice: 'mask'" in capsys.readouterr().err
    assert main(["export", "onnx", "--model", "fiber-tiny", "--part", "detector", "--out", str(tmp_path)]) == 1
    assert "fiber-tiny has no detector" in capsys.readouterr().err
    assert main(["export", "onnx", "--model", "fiber-tiny-fine", "--part", "image", "--out", str(tmp_path)]) == 1
    assert "has no dual encoder" in capsys.readouterr().err
    assert main(["export", "onnx", "--model", "fiber-tiny", "--out", str(tmp_path / "one.onnx")]) == 1
    assert "names one file, but 2 parts" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_missing_onnx_names_the_extra(capsys, tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else find_spec(name, *a))
    assert main(["export", "onnx", "--model", "fiber-tiny", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "needs the onnx package" in err and "pip install 'fibervl[export]'" in err

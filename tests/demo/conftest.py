"""A tiny ``fibervl run`` output for the demo tests: random-weight presets saved the way the run
saves its stages, ``stages/detection/model`` (fiber-tiny-fine, the detector) and
``stages/vqa/model`` and ``stages/caption/model`` (the same fiber-tiny with every head and an
answer list), and a few PNGs of shapes.

The fusion gates are opened so that cross-attention is in every output, and the detector's logit
prior is raised to 0 so that random weights score boxes above the default threshold."""

from __future__ import annotations

import warnings

import pytest
import torch
from PIL import Image, ImageDraw

import fibervl
from fibervl.data import train_bytelevel_bpe
from fibervl.predict import save
from fibervl.testing.models import set_fusion_gates

WORDS = ["a", "the", "red", "blue", "green", "star", "circle", "square", "heart", "small", "big", "left", "of", "what",
         "color", "is", "shape", "there"]
ANSWERS = ["yes", "no", "red", "blue", "green", "star", "circle"]


def _preset(name: str, tokenizer, **kwargs):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random.*")
        model, processor = fibervl.load(name, tokenizer=tokenizer, **kwargs)
    return set_fusion_gates(model, 0.5), processor


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    texts = [" ".join(WORDS[i:i + 5]) for i in range(len(WORDS))] * 4
    train_bytelevel_bpe(texts, vocab_size=300, min_frequency=1).save(root / "tokenizer")
    run = root / "run"
    model, processor = _preset("fiber-tiny-fine", root / "tokenizer", task="detect")
    with torch.no_grad():
        model.detector.head.bias0.zero_()
    save(model, processor, run / "stages" / "detection" / "model")
    model, processor = _preset("fiber-tiny", root / "tokenizer", answers=ANSWERS)
    for stage in ("vqa", "caption"):
        save(model, processor, run / "stages" / stage / "model")
    return run


@pytest.fixture(scope="session")
def shapes_png(tmp_path_factory):
    """A 160 x 120 PNG: a red square, a blue circle and a green square on grey."""
    image = Image.new("RGB", (160, 120), (200, 200, 200))
    draw = ImageDraw.Draw(image)
    draw.rectangle([15, 20, 55, 60], fill=(220, 30, 30))
    draw.ellipse([80, 30, 130, 80], fill=(30, 60, 220))
    draw.rectangle([40, 80, 70, 110], fill=(30, 180, 60))
    path = tmp_path_factory.mktemp("images") / "shapes.png"
    image.save(path)
    return path

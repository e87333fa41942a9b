"""Saved tiny models and small images for the predictor tests.

The models are presets with random weights (fiber-tiny with every head, fiber-tiny-fine with
the detector), their fusion gates opened so that cross-attention is in every output, saved
with :func:`fibervl.predict.save` the way a user would. The detector's logit prior is raised
to 0 so that random weights score boxes above the detection threshold."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

import fibervl
from fibervl.data import train_bytelevel_bpe
from fibervl.predict import save
from fibervl.testing.models import set_fusion_gates

WORDS = ("a the red blue green yellow star circle square heart small big left right of what color is shape "
         "how many image has two there are shapes in").split()
ANSWERS = ["yes", "no", "red", "blue", "green", "two", "star", "circle"]
# (width, height): wide, tall and square images, as saved
SIZES = [(200, 120), (96, 160), (128, 128), (150, 90)]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    texts = [" ".join(WORDS[i:i + 6]) for i in range(len(WORDS))] * 4
    path = tmp_path_factory.mktemp("tokenizer")
    train_bytelevel_bpe(texts, vocab_size=400, min_frequency=1).save(path)
    return path


def _preset(name: str, tokenizer_dir, **kwargs):
    with pytest.warns(UserWarning, match="random"):
        model, processor = fibervl.load(name, tokenizer=tokenizer_dir, **kwargs)
    return set_fusion_gates(model, 0.5), processor


@pytest.fixture(scope="session")
def coarse_dir(tokenizer_dir, tmp_path_factory):
    """fiber-tiny with every head and an answer list, saved."""
    model, processor = _preset("fiber-tiny", tokenizer_dir, answers=ANSWERS)
    return save(model, processor, tmp_path_factory.mktemp("coarse") / "model")


@pytest.fixture(scope="session")
def fine_dir(tokenizer_dir, tmp_path_factory):
    """fiber-tiny-fine (the grounding detector), saved."""
    model, processor = _preset("fiber-tiny-fine", tokenizer_dir, task="detect")
    with torch.no_grad():
        model.detector.head.bias0.zero_()
    return save(model, processor, tmp_path_factory.mktemp("fine") / "model")


def draw_scene(size: tuple[int, int], seed: int) -> Image.Image:
    """A few filled shapes on a plain background."""
    g = torch.Generator().manual_seed(seed)
    w, h = size
    image = Image.new("RGB", size, tuple(int(v) for v in torch.randint(0, 256, (3,), generator=g)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = int(torch.randint(0, w - 20, (), generator=g)), int(torch.randint(0, h - 20, (), generator=g))
        s = int(torch.randint(12, 30, (), generator=g))
        colour = tuple(int(v) for v in torch.randint(0, 256, (3,), generator=g))
        (draw.ellipse if seed % 2 else draw.rectangle)([x, y, x + s, y + s], fill=colour)
    return image


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory):
    """PNGs of different sizes and aspect ratios (sorted by name in SIZES order)."""
    root = tmp_path_factory.mktemp("images")
    for k, size in enumerate(SIZES):
        draw_scene(size, k).save(root / f"img{k}.png")
    return root


@pytest.fixture(scope="session")
def image_paths(image_dir):
    return [str(p) for p in sorted(image_dir.iterdir())]

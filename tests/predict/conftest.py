"""Saved tiny models and small images for the predictor tests.

The models are presets with random weights (fiber-tiny with every head, fiber-tiny-fine with
the detector), their fusion gates opened so that cross-attention is in every output, saved
with :func:`fibervl.predict.save` the way a user would. The detector's logit prior is raised
to 0 so that random weights score boxes above the detection threshold."""

from __future__ import annotations

import pytest
import torch

import fibervl
from fibervl.data import train_bytelevel_bpe
from fibervl.predict import save
from fibervl.testing.models import set_fusion_gates

from predict_helpers import ANSWERS, SIZES, WORDS, draw_scene


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

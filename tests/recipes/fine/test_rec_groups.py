"""REC accuracy broken down into expressions that name a held-out shape and the others."""

from __future__ import annotations

import torch
from torch import nn

import fibervl.tasks.grounding as grounding
from fibervl.data import Tokenizer
from fibervl.data.shapes import ShapesDataset


def test_no_training_expression_names_a_held_out_shape(shapes_tiny):
    shapes = ShapesDataset(shapes_tiny)
    test = [shapes.expression_group(s) for s in shapes.refexp("test")]
    assert "held_out" in test and "seen" in test
    assert {shapes.expression_group(s) for s in shapes.refexp("train")} == {"seen"}
    held = next(s for s in shapes.refexp("test") if shapes.expression_group(s) == "held_out")
    assert any(name in held.text for name in shapes.held_out_shapes)


def test_rec_accuracy_per_group(shapes_tiny, monkeypatch, eval_batches):
    """An oracle that finds every seen expression's box and misses every held-out one: 100 % and
    0 % in the groups, their share of the expressions overall."""
    shapes = ShapesDataset(shapes_tiny)
    current = eval_batches

    def oracle(model, batch, phrase_maps, top_k=10):
        b = current["batch"]
        return [[(boxes[:1] if shapes.expression_group(sample) == "seen" else torch.tensor([[0.0, 0.0, 1.0, 1.0]]),
                  torch.ones(1))] for sample, boxes in zip(b.samples, b.boxes)]

    monkeypatch.setattr(grounding, "rank_phrase_boxes", oracle)
    tok = Tokenizer.from_pretrained(shapes.tokenizer_dir)
    m = grounding.evaluate_refexp(nn.Linear(1, 1), tok, shapes.refexp("test"), 128, 40, group_of=shapes.expression_group)
    assert m["acc_seen"] == 100.0 and m["acc_held_out"] == 0.0
    assert m["expressions_seen"] + m["expressions_held_out"] == m["expressions"]
    assert abs(m["acc"] - 100.0 * m["expressions_seen"] / m["expressions"]) < 1e-4
    ungrouped = grounding.evaluate_refexp(nn.Linear(1, 1), tok, shapes.refexp("test"), 128, 40)
    assert ungrouped["acc"] == m["acc"] and "acc_seen" not in ungrouped

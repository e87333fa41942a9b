"""`fibervl pretrain coarse` end to end on the tiny shapes set: train, resume, export."""

from __future__ import annotations

import json

import torch

from fibervl.cli import main
from fibervl.modeling.fiber import FiberModel


def test_coarse_pretraining_runs_resumes_and_exports(shapes_tiny, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["pretrain", "coarse", "--config", "configs/fiber-tiny_coarse_shapes.yaml", f"data.root={shapes_tiny}",
            f"train.run_dir={run_dir}", "train.batch_size=8", "train.progress_bar=false", "train.ckpt_every=2",
            "train.eval_every=null",
            "data.num_eval=10"]
    assert main(args + ["train.max_steps=2"]) == 0
    assert (run_dir / "checkpoints").is_dir()
    # Extending the same run resumes from its last checkpoint.
    assert main(args + ["train.max_steps=4", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "i2t_r1=" in out
    model = FiberModel.from_pretrained(run_dir / "model")
    assert model.config.text.vocab_size == json.loads((shapes_tiny / "dataset.json").read_text())["tokenizer_vocab_size"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["images"] == 10 and 0 <= metrics["i2t_r1"] <= 100
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("step", 0) for r in log) == 4
    assert torch.isfinite(next(model.parameters())).all()

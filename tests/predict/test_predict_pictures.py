"""The main job's report pictures are drawn by fibervl.load and the predictors."""

from __future__ import annotations

from types import SimpleNamespace

from PIL import Image

from fibervl.mainjob import pictures


def test_report_pictures_are_drawn_with_the_predictors(shapes_tiny, coarse_dir, fine_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(pictures, "NUM_EXAMPLES", 2)  # two images a picture: the same calls, a third of the time
    stages = {"grounding": fine_dir, "detection": fine_dir, "retrieval": coarse_dir, "caption": coarse_dir,
              "vqa": coarse_dir}
    ctx = SimpleNamespace(data_root=str(shapes_tiny), out=tmp_path, stage_model=lambda stage: str(stages[stage]),
                          runner=SimpleNamespace(records=dict.fromkeys(stages)))
    figures = pictures.draw_all(ctx, tmp_path / "figures")
    names = sorted(p.split("/")[-1] for p in figures.values())
    assert names == ["captions_vqa.png", "detection.png", "grounding.png", "retrieval.png"]
    assert all(Image.open(tmp_path / p).size[0] > 300 for p in figures.values())

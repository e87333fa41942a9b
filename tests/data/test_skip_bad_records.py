"""``--skip-bad-records`` / ``data.skip_bad_records``: every command that reads data takes the
switch; bad records are then warned about, left out, and summed up per file and reason at the end.
Here through ``evaluate retrieval`` on COCO captions files (``data.format=coco_captions``)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from PIL import Image

from fibervl.cli import main
from fibervl.data import Tokenizer
from fibervl.engine.config import cli_help, parse_cli
from fibervl.modeling.factory import fit_to_tokenizer
from fibervl.modeling.fiber import FiberModel
from fibervl.recipes.image_text import CaptionData, caption_reader
from fibervl.recipes.retrieval import RetrievalConfig
from fibervl.testing.configs import micro_config


def test_the_switch_sets_the_config_key_and_is_listed():
    cfg, _ = parse_cli(RetrievalConfig, ["--skip-bad-records", "data.num_eval=3"])
    assert cfg.data.skip_bad_records is True and cfg.data.num_eval == 3
    assert parse_cli(RetrievalConfig, [])[0].data.skip_bad_records is False
    assert "--skip-bad-records" in cli_help(RetrievalConfig, "fibervl evaluate retrieval")


@pytest.fixture(scope="module")
def coco(tmp_path_factory, shapes_tiny):
    """COCO's layout: annotations/captions_{train,val}2017.json, images under {train,val}2017/;
    val holds an empty caption; and a micro model with its tokenizer."""
    root = tmp_path_factory.mktemp("coco")
    (root / "annotations").mkdir()
    for split in ("train2017", "val2017"):
        (root / split).mkdir()
        images, anns = [], []
        for i, colour in enumerate(("red", "blue", "green")):
            name = f"{i:012d}.jpg"
            Image.new("RGB", (64, 48), colour).save(root / split / name)
            images.append({"id": i, "file_name": name, "width": 64, "height": 48})
            anns += [{"id": 10 * i + k, "image_id": i, "caption": f"a {colour} picture {k}"} for k in range(2)]
        if split == "val2017":
            anns[3]["caption"] = "  "
        (root / "annotations" / f"captions_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns}), encoding="utf-8")
    tokenizer = Tokenizer.from_pretrained(shapes_tiny / "tokenizer")
    torch.manual_seed(0)
    FiberModel(fit_to_tokenizer(micro_config(), tokenizer)).save_pretrained(root / "model")
    tokenizer.save(root / "model" / "tokenizer")
    return root


def _data_args(coco, shapes_tiny):
    return ["data.format=coco_captions", f"data.captions={coco}/annotations/captions_{{split}}.json",
            f"data.root={coco}", "data.eval_split=val2017", f"data.tokenizer={shapes_tiny / 'tokenizer'}"]


def test_coco_captions_is_a_caption_format(coco, shapes_tiny):
    cfg, _ = parse_cli(RetrievalConfig, _data_args(coco, shapes_tiny) + ["--skip-bad-records"])
    reader = caption_reader(cfg.data, "train2017")
    assert len(reader) == 6 and reader[0].image_path == coco / "train2017" / "000000000000.jpg"
    assert len(caption_reader(cfg.data, "val2017")) == 5
    with pytest.raises(ValueError, match="data.format must be one of"):
        caption_reader(CaptionData(format="coco", captions="x.json"), "val")


def test_evaluate_stops_at_a_bad_record_or_skips_it_when_asked(coco, shapes_tiny, capsys, caplog):
    args = ["evaluate", "retrieval", "--model", str(coco / "model"), *_data_args(coco, shapes_tiny), "eval.rerank_k=0"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "captions_val2017.json [record annotation 3 (id 11)]: empty caption" in err
    assert "--skip-bad-records leaves such records out" in err  # the error says how to go past it
    for switch in ("--skip-bad-records", "data.skip_bad_records=true"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fibervl.data"):
            assert main(args + [switch]) == 0
        metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert metrics["split"] == "val2017"
        messages = [r.getMessage() for r in caplog.records]
        assert any("skipped bad record" in m and "[record annotation 3 (id 11)]: empty caption" in m for m in messages)
        assert messages[-1].startswith("1 bad record skipped") and "captions_val2017.json: 1 empty caption" in messages[-1]


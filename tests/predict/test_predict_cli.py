"""``fibervl predict TASK`` on files and folders: JSON lines on stdout, PNGs and
predictions.jsonl in the run directory, a saved gallery searched again."""

from __future__ import annotations

import json
import logging
import shutil

from PIL import Image

from fibervl.cli import main


def _lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]


def test_detect_on_a_folder_writes_a_run_directory(fine_dir, image_dir, image_paths, tmp_path, monkeypatch, capsys,
                                                    caplog):
    folder = tmp_path / "photos"
    shutil.copytree(image_dir, folder)
    (folder / "notes.txt").write_text("not an image, and not named like one: ignored")
    (folder / "zz_broken.jpg").write_text("text saved as .jpg")
    monkeypatch.chdir(tmp_path)
    rc = main(["predict", "detect", "--model", str(fine_dir), "--images", str(folder), "--classes", "star,circle",
               "--top", "2", "--batch-size", "3"])
    assert rc == 1  # one unreadable image; the others are predicted
    results = _lines(capsys)
    assert [r["image"] for r in results] == [str(folder / p.split("/")[-1]) for p in image_paths] + [
        str(folder / "zz_broken.jpg")]
    assert "not an image" in results[-1]["error"]
    out = tmp_path / "runs" / "predict-detect"
    for r, path in zip(results, image_paths):
        assert len(r["detections"]) == 2 and {d["class"] for d in r["detections"]} <= {"star", "circle"}
        assert Image.open(r["png"]).size == Image.open(path).size == (r["width"], r["height"])
        assert r["png"].startswith("runs/predict-detect/")  # under the current directory
    assert [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()] == results

    # --skip-bad-records: the broken image is a counted, summed-up skip; the run succeeds
    with caplog.at_level(logging.WARNING, logger="fibervl.data"):
        rc = main(["predict", "detect", "--model", str(fine_dir), "--images", str(folder), "--classes", "star,circle",
                   "--top", "2", "--skip-bad-records"])
    captured = capsys.readouterr()
    assert rc == 0
    assert [json.loads(line)["image"] for line in captured.out.strip().splitlines()] == [
        str(folder / p.split("/")[-1]) for p in image_paths]
    assert "1 unreadable image(s) skipped" in captured.err
    summary = caplog.records[-1].getMessage()  # the run ends by summing up what it skipped
    assert "1 bad record skipped" in summary and "zz_broken.jpg" in summary


def test_retrieval_builds_a_gallery_once_and_searches_the_saved_one(coarse_dir, image_dir, tmp_path, capsys):
    out = tmp_path / "search"
    queries = ["--text", "a red star", "--text", "two blue circles"]
    assert main(["predict", "retrieval", "--model", str(coarse_dir), "--images", str(image_dir), *queries,
                 "--rerank-k", "2", "--top", "3", "--out", str(out)]) == 0
    first = _lines(capsys)
    assert [r["query"] for r in first] == ["a red star", "two blue circles"]
    assert all(len(r["ranking"]) == 3 and (out / f"query_{k}_retrieval.png").is_file() for k, r in enumerate(first))
    assert (out / "gallery" / "gallery.json").is_file()
    assert main(["predict", "retrieval", "--model", str(coarse_dir), "--gallery", str(out / "gallery"), *queries,
                 "--rerank-k", "2", "--top", "3", "--out", str(out)]) == 0
    assert _lines(capsys) == first
    # the earlier form: one image, its texts ranked
    image = str(sorted(image_dir.iterdir())[0])
    assert main(["predict", "retrieval", "--model", str(coarse_dir), "--image", image, "--texts", "a,b red,c blue",
                 "--out", str(out)]) == 0
    (result,) = _lines(capsys)
    assert result["query"] == image and sorted(r["item"] for r in result["ranking"]) == ["a", "b red", "c blue"]


def test_vqa_caption_and_refexp_on_one_image(coarse_dir, fine_dir, image_paths, tmp_path, capsys):
    image = image_paths[0]
    png = tmp_path / "answer.png"
    assert main(["predict", "vqa", "--model", str(coarse_dir), "--image", image, "--question", "what color is it",
                 "--out", str(png)]) == 0
    result = json.loads(capsys.readouterr().out)  # one image: one JSON object
    assert result["png"] == str(png) and result["answer"] == result["top"][0]["answer"] and len(result["top"]) == 5
    assert main(["predict", "caption", "--model", str(coarse_dir), "--image", *image_paths[:2], "--beam", "2",
                 "--max-length", "4", "--out", str(tmp_path / "captions")]) == 0
    assert [r["image"] for r in _lines(capsys)] == image_paths[:2]
    assert main(["predict", "refexp", "--model", str(fine_dir), "--image", image, "--text", "the red star",
                 "--out", str(tmp_path / "refexp")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["box"]) == 4 and Image.open(result["png"]).size == Image.open(image).size

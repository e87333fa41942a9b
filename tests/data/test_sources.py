"""Data sources: SPEC parsing, every format opening its official layout, weighted mixtures, the
errors a wrong source gives, and ``fibervl data check`` finding each kind of problem."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from torch.utils.data import ConcatDataset

from fibervl.cli import main
from fibervl.data.errors import DataError
from fibervl.data.sources import (
    FORMATS, DataSource, MixedStream, Mixture, format_spec, open_eval, open_source, parse_spec, training_data,
    training_reader,
)
from fibervl.engine.config import ConfigError, load_config, parse_cli
from fibervl.experiment import split_name
from fibervl.recipes.fine_pretrain import FineConfig
from fibervl.recipes.vqa import VqaConfig


# ---- the SPEC form -----------------------------------------------------------------------

@pytest.mark.parametrize("spec,fields", [
    ("mdetr:mdetr_annotations/final_flickr_separateGT_train.json:flickr30k/images",
     dict(format="mdetr", annotations="mdetr_annotations/final_flickr_separateGT_train.json", images="flickr30k/images")),
    ("coco:coco/annotations/instances_val2017.json:coco/val2017",
     dict(format="coco", annotations="coco/annotations/instances_val2017.json", images="coco/val2017")),
    ("lvis:lvis/lvis_v1_val.json:coco", dict(format="lvis", annotations="lvis/lvis_v1_val.json", images="coco")),
    ("odinw:odinw/Aquarium/raw/valid", dict(format="odinw", annotations="odinw/Aquarium/raw/valid", images="")),
    ("karpathy:dataset_coco.json:coco", dict(format="karpathy", annotations="dataset_coco.json", images="coco")),
    ("webdataset:shards/{000000..000999}.tar", dict(format="webdataset", annotations="shards/{000000..000999}.tar")),
    ("vqav2:vqav2_dir:coco", dict(format="vqav2", annotations="vqav2_dir", images="coco")),
    ("nlvr2:nlvr2/data/dev.json:nlvr2/images", dict(format="nlvr2", annotations="nlvr2/data/dev.json", images="nlvr2/images")),
    ("shapes:data/shapes", dict(format="shapes", annotations="data/shapes")),
    ("shapes", dict(format="shapes", annotations="data/shapes")),
    ("o365:o365/zhiyuan_objv2_train.json:o365@2.5", dict(format="o365", images="o365", weight=2.5)),
    # options after the format; a ':' inside {...} does not separate
    ("vqav2,split=val2014,image_template={split}/COCO_{split}_{image_id:012d}.jpg:vqa:coco@0.5",
     dict(split="val2014", image_template="{split}/COCO_{split}_{image_id:012d}.jpg", annotations="vqa", images="coco",
          weight=0.5)),
    ("coco,weight=3:a@b.json", dict(annotations="a@b.json", weight=3.0)),
    ("odinw,shots=5,seed=1:odinw/Aquarium/raw/train", dict(format="odinw", shots=5, seed=1, images="")),
])
def test_parse_spec(spec, fields):
    source = parse_spec(spec)
    for key, value in fields.items():
        assert getattr(source, key) == value, key
    assert parse_spec(format_spec(source)) == source


@pytest.mark.parametrize("spec,message", [
    ("cocoo:a.json", "unknown format 'cocoo'"),
    ("coco,splt=val:a.json", "unknown option 'splt=val'"),
    ("coco:a:b:c", "too many ':'"),
    ("coco:", "no annotations"),
    ("", "expected FORMAT:ANNOTATIONS"),
    ("odinw,shots=five:f", "shots must be a whole number"),
    ("odinw,shots=-1:f", "shots must be a whole number"),
    ("odinw,seed=2:f", "give shots=K too"),
    ("coco,shots=5:a.json", "options of the odinw format, not of coco"),
])
def test_bad_specs_name_the_spec(spec, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_spec(spec)
    assert repr(spec) in str(err.value) or spec.split(":")[0] in str(err.value)


def test_sources_in_yaml_and_on_the_command_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  train:\n    - mdetr:a.json:imgs@2\n    - {format: o365, annotations: o.json, weight: 0.5}\n"
                      "  eval: {format: coco, annotations: '{split}.json', split: val2017}\n")
    cfg = load_config(FineConfig, config)
    assert cfg.data.train == (DataSource("mdetr", "a.json", "imgs", weight=2.0), DataSource("o365", "o.json", weight=0.5))
    assert cfg.data.eval == DataSource("coco", "{split}.json", split="val2017")
    # --train-data replaces the file's list; options keep their place among the overrides
    cfg, _ = parse_cli(FineConfig, ["--config", str(config), "--train-data", "coco:x.json@3", "--train-data=odinw:f",
                                    "--eval-data", "coco:y.json", "data.eval.split=val"])
    assert [s.format for s in cfg.data.train] == ["coco", "odinw"] and cfg.data.train[0].weight == 3
    assert cfg.data.eval == DataSource("coco", "y.json", split="val")
    with pytest.raises(ConfigError, match="--eval-data was given 2 times"):
        parse_cli(VqaConfig, ["--eval-data", "vqav2:a", "--eval-data", "vqav2:b"])
    with pytest.raises(ConfigError, match="unknown format 'cco'"):
        parse_cli(VqaConfig, ["--train-data", "cco:a"])


def test_older_keys_are_one_source(tmp_path):
    cfg, _ = parse_cli(VqaConfig, ["data.root=/v", "data.source=mscoco", "data.image_root=/c", "data.image_template=t"])
    assert cfg.data.train_sources() == [DataSource("vqav2", "/v", "/c", image_template="t")]
    assert cfg.data.eval_source() == cfg.data.train_sources()[0]
    cfg, _ = parse_cli(VqaConfig, ["data.root=/s"])
    assert cfg.data.eval_source() == DataSource("shapes", "/s")


@pytest.mark.parametrize("spec,name", [
    ("nlvr2:nlvr2/data/test1.json:nlvr2/images", "test1"),  # one file, one split: named by the file
    ("coco_captions:coco/annotations/captions_val2017.json:coco/val2017", "captions_val2017"),
    ("karpathy:dataset_coco.json:coco", "test"),  # holds several: the split asked for
    ("coco_captions:a/captions_{split}.json:a/{split}", "test"),
    ("vqav2,split=test-dev2015:vqav2:coco", "test-dev2015"),  # its own split option
])
def test_the_split_an_evaluation_reports(spec, name):
    """``evaluate`` reports the split it read: a one-split file is read whole whatever
    ``data.eval_split`` (``--split``) says, so its name is the file's."""
    assert split_name(parse_spec(spec), "test") == name


# ---- every format opens its official layout ------------------------------------------------

def test_every_format_opens_its_layout(official):
    formats = set()
    for name, spec in official.items():
        source = parse_spec(spec)
        for kind in FORMATS[source.format].kinds:
            if not FORMATS[source.format].available:
                continue
            reader = open_source(source, kind, "train2017" if source.format == "coco_captions" else "train")
            samples = list(reader)
            assert samples, (name, kind)
            formats.add(source.format)
            first = samples[0]
            assert first.image is not None or Path(first.image_path).is_file(), (name, kind, first.image_path)
            if kind == "detection":
                assert sum(s.num_boxes for s in samples) > 0 and reader.categories
            if source.format == "webdataset":  # shard 1 holds shard 0's samples as .jpeg + .json caption
                half = len(samples) // 2
                assert [s.text for s in samples[half:]] == [s.text for s in samples[:half]]
                assert [s.image.size for s in samples[half:]] == [s.image.size for s in samples[:half]]
    assert formats == {f for f in FORMATS if f != "shapes" and FORMATS[f].available}


def test_lvis_images_come_from_coco_url_under_either_split(official):
    if not FORMATS["lvis"].available:
        pytest.skip("the LVIS reader is not in this version")
    reader = open_source(parse_spec(official["lvis"]), "detection", "val")
    folders = Counter(s.image_path.parent.name for s in reader)
    assert folders == {"val2017": 8, "train2017": 1}


def test_odinw_category_zero_is_not_a_class(official):
    if not FORMATS["odinw"].available:
        with pytest.raises(ConfigError, match="not available yet"):
            open_source(parse_spec(official["odinw"]), "detection", "val")
        return
    reader = open_source(parse_spec(official["odinw"]), "detection", "val")
    assert 0 not in reader.categories and "creatures" not in reader.categories.values()


def test_odinw_k_shot_source(official, tmp_path):
    from fibervl.data.readers.odinw import OdinwReader, few_shot_image_ids

    folder = parse_spec(official["odinw_train"]).annotations
    every = OdinwReader(folder).samples
    for shots, seed in ((1, 1), (1, 2), (2, 3)):
        spec = f"odinw,shots={shots},seed={seed}:{folder}"
        ids = [s.image_id for s in open_source(parse_spec(spec), "detection", "train")]
        assert ids == [s.image_id for s in every if s.image_id in set(few_shot_image_ids(every, shots, seed))]
        assert 0 < len(ids) < len(every)
    # the YAML form, and a training mixture of it
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  train:\n    - {{format: odinw, annotations: '{folder}', shots: 1, seed: 2}}\n")
    cfg = load_config(FineConfig, config)
    assert cfg.data.train == (parse_spec(f"odinw,shots=1,seed=2:{folder}"),)
    mixed = training_reader(cfg.data.train_sources(), "detection", "train")
    assert sorted(s.image_id for s in mixed) == sorted(few_shot_image_ids(every, 1, 2))


def test_shapes_source_picks_the_file_by_kind(shapes_tiny):
    source = DataSource("shapes", str(shapes_tiny))
    assert open_source(source, "vqa", "val").questions_file.name == "v2_OpenEnded_shapes_val_questions.json"
    assert open_source(source, "refexp", "test").file.name == "final_shapes_refexp_test.json"
    assert open_source(source, "detection", "train").file.name == "instances_train.json"


# ---- wrong sources are one clear error -----------------------------------------------------

def test_wrong_sources_are_clear_errors(official, tmp_path):
    with pytest.raises(ConfigError, match=r"coco:.*format 'coco' holds detection data, but finetune vqa needs vqa data "
                                          r"\(formats: shapes, vqav2\)"):
        open_source(parse_spec(official["coco"]), "vqa", "val", what="finetune vqa")
    missing = f"coco:{tmp_path}/nope.json:{tmp_path}"
    with pytest.raises(DataError, match=r"nope\.json: annotation file not found \(source coco:"):
        open_source(parse_spec(missing), "detection", "val")
    no_images = official["coco"].rsplit(":", 1)[0] + f":{tmp_path}/no_images"
    with pytest.raises(DataError, match="no_images: image folder not found"):
        open_source(parse_spec(no_images), "detection", "val")
    with pytest.raises(ConfigError, match="a stream cannot be indexed"):
        open_eval(parse_spec(official["webdataset"]), "captions", "val")
    with pytest.raises(DataError, match="shard not found"):
        open_source(parse_spec(f"webdataset:{tmp_path}/s/{{0..1}}.tar"), "captions", "train")
    # a single-file training source leaves no evaluation split to guess
    cfg, _ = parse_cli(FineConfig, ["--train-data", official["flickr_train"]])
    with pytest.raises(ConfigError, match="give --eval-data SPEC"):
        cfg.data.eval_source()
    assert main(["finetune", "ground", "--train-data", official["coco"], "--eval-data", official["flickr_val"],
                 "data.tokenizer=x"]) == 1


# ---- mixtures -----------------------------------------------------------------------------

def test_mixture_repeats_each_part_by_its_weight():
    parts = [list(range(0, 10)), list(range(100, 104)), list(range(200, 206))]
    mixed = Mixture(parts, [1, 2.5, 0.5], seed=3)
    assert mixed.counts() == [10, 10, 3] and len(mixed) == 23
    seen = Counter(mixed[i] for i in range(len(mixed)))
    assert all(seen[x] == 1 for x in parts[0])
    assert sorted(seen[x] for x in parts[1]) == [2, 2, 3, 3]  # 2 whole copies + a fixed half
    assert sum(seen[x] for x in parts[2]) == 3 and all(seen[x] <= 1 for x in parts[2])
    assert [Mixture(parts, [1, 2.5, 0.5], seed=3)[i] for i in range(23)] == [mixed[i] for i in range(23)]
    other = Mixture(parts, [1, 2.5, 0.5], seed=4)
    assert {other[i] for i in range(20, 23)} != {mixed[i] for i in range(20, 23)}
    # weight 1 everywhere: exactly the concatenation (what the fine-grained recipe used before)
    plain = Mixture(parts)
    concat = ConcatDataset(parts)
    assert [plain[i] for i in range(len(plain))] == [concat[i] for i in range(len(concat))]
    with pytest.raises(IndexError):
        mixed[23]


def test_training_sources_mix_as_asked(official):
    flickr, refcoco = parse_spec(official["flickr_train"] + "@2"), parse_spec(official["refcoco_train"] + "@0.5")
    reader = training_reader([flickr, refcoco], "grounding", "train")
    assert isinstance(reader, Mixture) and reader.counts() == [16, 4] and len(reader) == 20
    single = training_reader([parse_spec(official["karpathy"])], "captions", "train")
    assert type(single).__name__ == "KarpathyCaptions"  # one source of weight 1 is its own reader
    with pytest.raises(ConfigError, match="a stream cannot be indexed"):
        training_reader([parse_spec(official["webdataset"])], "captions", "train")


def test_streams_mix_by_weight_deterministically(official):
    sources = [parse_spec(official["karpathy"]), parse_spec(official["webdataset"] + "@3")]
    stream = training_data(sources, "captions", "train", processor=lambda s: s.dataset, seed=1)
    assert isinstance(stream, MixedStream)
    stream.set_epoch(0)
    draws = [x for _, x in zip(range(400), stream)]
    share = draws.count("webdataset") / len(draws)
    assert 0.68 < share < 0.82, share  # 3:1 by weight
    assert [x for _, x in zip(range(400), stream)] == draws  # the same stream again
    stream.seed = 2
    assert [x for _, x in zip(range(400), stream)] != draws
    ids = [(Path(s.meta["shard"]).name, s.sample_id)
           for _, s in zip(range(300), training_data(sources[1:], "captions", "train", lambda s: s))]
    assert len(set(ids)) == 120 and ids[:120] == ids[120:240]  # endless: the shards again, in order


# ---- fibervl data check -------------------------------------------------------------------

def _check(capsys, *args) -> tuple[int, dict]:
    rc = main(["data", "check", *args, "--json"])
    out = capsys.readouterr().out.strip()
    return rc, json.loads(out) if out else {}


def test_data_check_counts_a_clean_set(official, capsys):
    rc, report = _check(capsys, official["coco"])
    assert rc == 0 and report["errors"] == 0
    (part,) = report["parts"]
    assert part["kind"] == "detection" and part["samples"] == part["images"] == 8
    assert part["boxes"] == sum(part["boxes_per_category"].values()) > 0
    rc, report = _check(capsys, official["karpathy"])
    # restval is read with train, as training reads it: counted once, not as a split of its own too
    assert rc == 0 and [p["split"] for p in report["parts"]] == ["train", "val"]
    karpathy = json.loads(Path(parse_spec(official["karpathy"]).annotations).read_text())["images"]
    assert report["parts"][0]["images"] == sum(i["split"] in ("train", "restval") for i in karpathy)
    assert main(["data", "check", official["vqav2_val"]]) == 0
    assert "answer types:" in capsys.readouterr().out


def test_data_check_names_each_problem(official, tmp_path, capsys):
    root = tmp_path / "coco"
    shutil.copytree(Path(parse_spec(official["coco"]).images), root / "val2017")
    data = json.loads(Path(parse_spec(official["coco"]).annotations).read_text())
    images = data["images"]
    (root / "val2017" / images[0]["file_name"]).unlink()  # missing image
    (root / "val2017" / images[1]["file_name"]).write_bytes(b"not a jpeg")  # unreadable image
    images[2]["width"] = 64  # the file is 128 x 128
    anns = data["annotations"]
    anns[0]["bbox"] = [130, 20, 50, 50]  # outside its 128 x 128 image (a box reaching past the border is clipped)
    anns[1]["category_id"] = 999  # unknown category
    anns[2]["image_id"] = 424242  # orphan: no such image
    (root / "annotations").mkdir()
    file = root / "annotations" / "instances_val2017.json"
    file.write_text(json.dumps(data))
    rc, report = _check(capsys, f"coco:{file}:{root / 'val2017'}")
    assert rc == 1
    problems = report["parts"][0]["problems"]
    found = {p["kind"]: p for p in problems}
    image = root / "val2017"
    assert found["image file not found"]["file"] == str(image / images[0]["file_name"])
    assert found["not an image file (looks like text)"]["file"] == str(image / images[1]["file_name"])
    size = found["image is NxN (after EXIF orientation) but the annotation says NxN"]
    assert size["file"] == str(image / images[2]["file_name"]) and "128x128" in size["problem"]
    outside = [p for p in problems if p["kind"] == "box outside the image or empty"]
    assert outside[0]["record"] == "annotation 0 (id 1)" and outside[0]["file"] == str(file)
    assert found["unknown category id N"]["record"] == "annotation 1 (id 2)"
    assert found["image_id N is not in images"]["record"] == "annotation 2 (id 3)"
    assert report["errors"] == len(problems) >= 6
    # captions: an empty caption, named by its record
    caps = json.loads(Path(str(parse_spec(official["coco_captions"]).annotations).replace("{split}", "val2017")).read_text())
    caps["annotations"][3]["caption"] = " "
    cap_file = tmp_path / "captions_val2017.json"
    cap_file.write_text(json.dumps(caps))
    images_dir = parse_spec(official["coco_captions"]).images.replace("{split}", "val2017")
    rc, report = _check(capsys, f"coco_captions:{cap_file}:{images_dir}", "--no-images")
    assert rc == 1 and [p["record"] for p in report["parts"][0]["problems"]] == [f"annotation 3 (id {caps['annotations'][3]['id']})"]
    assert main(["data", "check", f"coco:{tmp_path}/none.json"]) == 2
    assert "annotation file not found" in capsys.readouterr().err
    # NLVR2 without IMAGES: the images are looked for beside the JSON lines, none is there
    nlvr2 = parse_spec(official["nlvr2_dev"])
    assert main(["data", "check", f"nlvr2:{nlvr2.annotations}"]) == 1
    out = capsys.readouterr().out
    assert "image file not found" in out and "none of its images is there: is IMAGES" in out
    assert main(["data", "check", str(nlvr2)]) == 0 and "none of its images" not in capsys.readouterr().out

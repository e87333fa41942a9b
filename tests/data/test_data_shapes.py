import hashlib
import json
import random
from collections import Counter

import numpy as np
import pytest


from fibervl.data.cli import main
from fibervl.data.shapes import HELD_OUT_SHAPES, SHAPES, ShapesConfig, generate
from fibervl.data.shapes.nlvr2 import NLVR2_TEMPLATES
from fibervl.data.shapes.questions import YesNoBalancer, questions
from fibervl.data.shapes.render import _draw_mask, _noise, render
from fibervl.data.shapes.vocab import NUMBER_WORDS
from fibervl.data.shapes.scene import sample_scene
from fibervl.data.shapes.vocab import plural


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in ("dataset.json", "README.md"):  # these hold the timing
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic_and_independent_of_worker_count(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(a, ShapesConfig(size=12, seed=5, workers=1, vocab_size=400))
    generate(b, ShapesConfig(size=12, seed=5, workers=2, vocab_size=400))
    generate(c, ShapesConfig(size=12, seed=6, workers=1, vocab_size=400))
    assert _digest(a) == _digest(b) != _digest(c)


def test_one_object_scenes_skip_the_statements_they_cannot_make(tmp_path):
    """With one object an image no pair offers a relation statement: those NLVR2 items are skipped
    (the generator used to draw pairs for them forever), every other template is written."""
    generate(tmp_path, ShapesConfig(size=40, seed=1, workers=1, vocab_size=400, min_objects=1, max_objects=1))
    lines = (tmp_path / "nlvr2" / "train.json").read_text().splitlines()
    templates = {json.loads(line)["template"] for line in lines}
    assert templates == set(NLVR2_TEMPLATES) - {"relation_in"}


def test_counts_answers_match_the_boxes(shapes):
    det = {s.image_id: s for s in shapes.detection("test")}
    vqa = shapes.vqa("test")
    checked = 0
    for q in vqa:
        if q.question_type != "how many":
            continue
        boxes = det[q.image_id]
        names = [SHAPES[c - 1] for c in boxes.category_ids.tolist()]
        if q.text in ("how many shapes are there?", "how many objects are in the picture?"):
            assert q.meta["multiple_choice_answer"] == str(boxes.num_boxes)
            checked += 1
        for shape in SHAPES:
            if q.text == f"how many {plural(shape)} are there?":
                assert q.meta["multiple_choice_answer"] == str(names.count(shape))
                checked += 1
    assert checked >= 5


def test_answers_have_a_clear_majority_and_some_disagreement(shapes):
    vqa = shapes.vqa("train")
    disagree = 0
    for q in vqa:
        counts = Counter(q.answers)
        assert counts[q.meta["multiple_choice_answer"]] >= 6
        disagree += len(counts) > 1
    assert 0.1 < disagree / len(vqa) < 0.5


def test_held_out_classes_never_labelled_in_fine_grained_training(shapes):
    words = set(HELD_OUT_SHAPES) | {plural(s) for s in HELD_OUT_SHAPES}
    held_ids = {SHAPES.index(s) + 1 for s in HELD_OUT_SHAPES}
    assert set(shapes.held_out_category_ids) == held_ids and len(shapes.seen_category_ids) == len(SHAPES) - 2
    det = shapes.detection("train")
    assert not held_ids & set(det.categories)
    assert all(not held_ids & set(s.category_ids.tolist()) for s in det)
    for reader in (shapes.grounding("train"), shapes.refexp("train")):
        for s in reader:
            assert not words & {w.strip(".,?") for w in s.text.split()}
            assert not held_ids & set(s.category_ids.tolist())
    # val is scored as test is (zero-shot choices are made on val): every class, every image
    for split in ("val", "test"):
        assert held_ids <= set(shapes.detection(split).categories)
        assert len(shapes.detection(split)) == len(shapes.captions(split).images)
    test = shapes.detection("test")
    # no image of the box files shows a held-out shape, even unnamed ("three shapes"): it would be
    # trained as background; the captions of those images name it
    showing = {s.image_path.name for s in shapes.captions("train") if words & {w.strip(".,?") for w in s.text.split()}}
    fine_images = {s.image_path.name for s in shapes.detection("train")}
    assert showing and not showing & fine_images
    assert any(held_ids & set(s.category_ids.tolist()) for s in test)
    assert any(w in s.text for s in shapes.captions("train") for w in words)  # named in coarse data


def test_grounding_phrases_name_their_boxes(shapes):
    for s in shapes.grounding("test"):
        for cat, spans in zip(s.category_ids.tolist(), s.tokens_positive):
            phrase = s.text[spans[0][0]:spans[0][1]]
            shape = SHAPES[cat - 1]
            assert phrase.endswith((shape, plural(shape), "shape", "shapes")), (phrase, shape)
    for s in shapes.refexp("test"):
        phrase = s.text[s.tokens_positive[0][0][0]:s.tokens_positive[0][0][1]]
        assert phrase.startswith("the ") and phrase.endswith(SHAPES[int(s.category_ids[0]) - 1])


def test_objects_are_visible_at_128px(shapes):
    for s in shapes.detection("test"):
        w = s.boxes[:, 2] - s.boxes[:, 0]
        h = s.boxes[:, 3] - s.boxes[:, 1]
        assert (w >= 5).all() and (h >= 5).all() and (s.boxes >= 0).all() and (s.boxes <= 128).all()
        assert 2 <= s.num_boxes <= 8


def test_yes_no_answers_are_balanced_per_template():
    rng = random.Random(0)
    bal = YesNoBalancer()
    for i in range(600):
        scene = sample_scene(rng, i, "train", 128)
        questions(scene, rng, bal)
    for template, (yes, no) in bal.counts.items():
        assert yes + no > 50, template
        assert abs(yes - no) <= 2, (template, yes, no)


def test_nlvr2_labels_balanced_and_statements_true(shapes):
    items = shapes.nlvr2("train")
    by_template = Counter((s.meta["template"], s.label) for s in items)
    for t in NLVR2_TEMPLATES:
        assert abs(by_template[(t, True)] - by_template[(t, False)]) <= 1
    # check the count statements against the boxes: the test box file has every image and class
    det = {s.image_id: s for s in shapes.detection("test")}
    checked = 0
    for s in shapes.nlvr2("test"):
        for side, key in (("left", "left_image_id"), ("right", "right_image_id")):
            prefix = f"the {side} image contains exactly "
            if s.text.startswith(prefix) and s.text.split()[-1].rstrip(".") in {plural(x) for x in SHAPES} | set(SHAPES):
                noun = s.text.split()[-1].rstrip(".")
                shape = next(x for x in SHAPES if noun in (x, plural(x)))
                words = s.text[len(prefix):].split()
                if len(words) == 2:
                    names = [SHAPES[c - 1] for c in det[s.meta[key]].category_ids.tolist()]
                    n = NUMBER_WORDS.index(words[0])
                    assert (names.count(shape) == n) == s.label, s.text
                    checked += 1
    assert checked >= 3


def test_baselines_and_readme_written(shapes_dir):
    base = json.loads((shapes_dir / "baselines.json").read_text())
    for split in ("val", "test"):
        v = base[split]["vqa"]
        assert v["all"]["chance"] < v["all"]["majority"] <= 100
        assert base[split]["nlvr2"]["chance"] == 50.0
    readme = (shapes_dir / "README.md").read_text()
    assert "text-only prior" in readme
    assert f"{base['test']['vqa']['all']['majority']:.2f}" in readme
    meta = json.loads((shapes_dir / "dataset.json").read_text())
    assert meta["tokenizer_vocab_size"] <= 600 and (shapes_dir / "tokenizer" / "tokenizer.json").is_file()


def test_captions_fit_40_tokens(shapes):
    from fibervl.data import Tokenizer

    tok = Tokenizer.from_pretrained(shapes.tokenizer_dir)
    texts = [s.text for s in shapes.captions("train")] + [s.text for s in shapes.vqa("train")]
    lengths = tok(texts).attention_mask.sum(-1)
    assert int(lengths.max()) <= 40


def test_regenerating_smaller_replaces_old_files(tmp_path):
    from fibervl.data.shapes import ShapesDataset

    generate(tmp_path, ShapesConfig(size=30, seed=1, workers=1, vocab_size=400))
    (tmp_path / "mine.txt").write_text("keep me")
    generate(tmp_path, ShapesConfig(size=10, seed=1, workers=1, vocab_size=400))
    assert len(list((tmp_path / "images" / "train").iterdir())) == 10
    assert len(list(ShapesDataset(tmp_path).webdataset())) == 10
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_cli(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["shapes", "--out", str(out), "--size", "12", "--workers", "1", "--no-webdataset"]) == 0
    assert (out / "dataset.json").is_file() and not (out / "webdataset").exists()
    assert main(["shapes", "--out", str(out), "--size", "12"]) == 2  # not empty, no --force
    assert main(["shapes", "--out", str(tmp_path / "e"), "--size", "huge"]) == 2
    assert "must be an integer" in capsys.readouterr().err
    (out / "README.md").unlink()
    assert main(["baselines", str(out)]) == 0 and (out / "README.md").is_file()
    assert main(["baselines", str(tmp_path)]) == 2 and "dataset.json missing" in capsys.readouterr().err


def test_difficulty_knobs_limit_objects_and_backgrounds(tmp_path):
    generate(tmp_path, ShapesConfig(size=20, seed=2, workers=1, vocab_size=400, min_objects=1, max_objects=2,
                                    backgrounds=("plain",), nlvr2_per_image=3.0))
    detection = json.loads((tmp_path / "detection" / "instances_train.json").read_text())
    per_image: dict[int, int] = {}
    for ann in detection["annotations"]:
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
    # Held-out classes are not labelled in train, so an image may show fewer boxes than objects.
    assert max(per_image.values()) <= 2
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["config"]["backgrounds"] == ["plain"] and meta["config"]["max_objects"] == 2
    # 3 statements per image asked: 60 drawn for 20 training images; a few are dropped when no
    # pair of this small split gives the wanted label.
    assert 48 <= meta["splits"]["train"]["nlvr2_items"] <= 60
    with pytest.raises(ValueError, match="min_objects"):
        ShapesConfig(min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="nlvr2_per_image"):
        ShapesConfig(nlvr2_per_image=0)
    with pytest.raises(ValueError, match="backgrounds"):
        ShapesConfig(backgrounds=("lava",))


def test_captions_of_small_scenes_name_every_object_by_colour_and_shape():
    """Every caption of a scene with up to three (colour, shape) groups names each group, so that
    captions tell images apart; larger scenes keep partial captions that fit 40 tokens."""
    from fibervl.data.shapes.captions import COMPLETE_UP_TO, captions
    from fibervl.data.shapes.describe import count_phrase, groups
    from fibervl.data.shapes.scene import scene_rng

    complete = partial = 0
    for i in range(200):
        scene = sample_scene(scene_rng(0, "train", i), i, "train", 128, 1, 6, ("plain",))
        g = groups(scene)
        for caption in captions(scene, random.Random(i)):
            # a group is named by a span over exactly its objects that says its colour and shape
            # ("a red star", "two red stars", "a large red star")
            named = {key for p in caption.phrases for key, idx in g.items()
                     if set(p.objects) == set(idx) and key[0] in caption.text[p.start:p.end].split()
                     and caption.text[p.start:p.end].split()[-1] in (key[1], plural(key[1]))}
            missing = [key for key in g if key not in named]
            if len(g) <= COMPLETE_UP_TO:
                assert not missing, (caption.text, missing)
                complete += 1
            else:
                partial += bool(missing)
            for p in caption.phrases:  # each named group's span covers exactly its objects
                phrase = caption.text[p.start:p.end]
                for key, idx in g.items():
                    if phrase == count_phrase(len(idx), *key):
                        assert set(p.objects) == set(idx)
    assert complete > 500 and partial > 0


def test_a_scene_can_be_drawn_from_some_shapes_only():
    seen = tuple(s for s in SHAPES if s not in HELD_OUT_SHAPES)
    drawn = {o.shape for k in range(40)
             for o in sample_scene(random.Random(k), k, "x", 128, 1, 3, shapes=seen).objects}
    assert drawn and drawn <= set(seen)
    everything = {o.shape for k in range(40) for o in sample_scene(random.Random(k), k, "x", 128, 1, 3).objects}
    assert everything & set(HELD_OUT_SHAPES)  # the default draws every shape


def test_noise_is_a_standard_normal_window_chosen_by_the_scene_rng():
    a = _noise(np.random.default_rng(1), 128, 128)
    assert a.shape == (128, 128, 3) and a.dtype == np.float32
    assert np.array_equal(a, _noise(np.random.default_rng(1), 128, 128))  # a scene's pixels follow its seed
    assert not np.array_equal(a, _noise(np.random.default_rng(2), 128, 128))
    assert abs(float(a.mean())) < 0.05 and abs(float(a.std()) - 1) < 0.05
    assert _noise(np.random.default_rng(3), 7, 20, 1).shape == (7, 20, 1)


def test_visible_box_is_the_extent_of_the_pixels_no_later_object_covers():
    occluded = 0
    for k in range(60):
        scene = sample_scene(random.Random(k), k, "x", 96, 3, 5)
        render(scene)
        masks = []
        for obj in scene.objects:
            alpha, (x0, y0) = _draw_mask(obj, scene.size)
            full = np.zeros((scene.size, scene.size), dtype=bool)
            full[y0:y0 + alpha.shape[0], x0:x0 + alpha.shape[1]] = alpha >= 0.5
            masks.append(full)
        for i, obj in enumerate(scene.objects):
            visible = masks[i] & ~np.any(masks[i + 1:], axis=0) if i + 1 < len(masks) else masks[i]
            occluded += int(visible.sum() < masks[i].sum())
            ys, xs = np.nonzero(visible)
            assert obj.visible_box == (xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0)
    assert occluded > 0  # the scenes did put objects over others

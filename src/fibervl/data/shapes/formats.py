"""Builders of the annotation files, each in the real data set's format.

Each takes the scenes of a split (with their visible boxes) and their text, and returns
the JSON object (or writes the files) exactly as the real data sets lay them out.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

from .config import SPLITS, image_file_name
from .nlvr2 import NLVR2_TEMPLATES, nlvr2_statement
from .scene import SceneSpec, scene_rng
from .vocab import HELD_OUT_SHAPES, SEEN_SHAPES, SHAPES, category_id

WEBDATASET_SHARD_SIZE = 1000
# Random pairs an NLVR2 item tries for its statement, then for its label, before it is skipped.
PAIR_TRIES = 300


def _xywh(box) -> list[float]:
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]


def fine_grained_scenes(split: str, scenes: list[SceneSpec]) -> list[SceneSpec]:
    """The scenes of ``split``'s box files (detection, grounding, referring expressions): in
    train, those that show no held-out shape. This is the zero-shot detection protocol (Bansal et
    al., ECCV 2018): an unlabelled held-out object in a training image would be trained as
    background, and the detector would learn to suppress exactly the classes it is tested on
    (held-out AP 13.8 against 25.9 on the same coarse model, docs/results.md). Captions, VQA and
    NLVR2 keep every image: the held-out names are learnt from text, never from boxes. Val keeps
    every scene, as test does, so that zero-shot choices can be made on val."""
    if split != "train":
        return scenes
    return [s for s in scenes if not any(o.shape in HELD_OUT_SHAPES for o in s.objects)]


def karpathy_json(cfg, scenes_by_split, texts_by_split) -> dict:
    images, sentid = [], 0
    for split in SPLITS:
        for scene in scenes_by_split[split]:
            sents = []
            for t in texts_by_split[split].captions[scene.image_id]:
                sents.append({"tokens": t.text.split(), "raw": t.text, "imgid": len(images), "sentid": sentid})
                sentid += 1
            images.append({
                "filepath": split,
                "filename": image_file_name(split, scene.image_id, cfg.image_format),
                "imgid": len(images),
                "split": split,
                "sentences": sents,
                "sentids": [s["sentid"] for s in sents],
                "cocoid": scene.image_id,
            })
    return {"images": images, "dataset": "shapes"}


def vqa_json(cfg, split, scenes, text) -> tuple[dict, dict]:
    info = {"description": "fibervl shapes VQA (VQAv2 format)", "version": "2.0"}
    qs, anns = [], []
    for scene in scenes:
        for k, (q, answers) in enumerate(zip(text.questions[scene.image_id], text.answers[scene.image_id])):
            qid = scene.image_id * 100 + k
            qs.append({"image_id": scene.image_id, "question": q.question, "question_id": qid})
            anns.append({
                "question_id": qid,
                "image_id": scene.image_id,
                "question_type": q.question_type,
                "answer_type": q.answer_type,
                "multiple_choice_answer": q.answer,
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
                "template": q.template,
            })
    common = {"info": info, "license": {"name": "CC0"}, "data_type": "shapes", "data_subtype": split}
    return {**common, "task_type": "Open-Ended", "questions": qs}, {**common, "annotations": anns}


def mdetr_json(cfg, split, scenes, text, kind) -> dict:
    """MDETR-style COCO JSON: one "image" entry per (image, sentence) pair. In train, no
    image that shows a held-out shape (:func:`fine_grained_scenes`)."""
    images, anns, cats = [], [], [{"id": category_id(s), "name": s, "supercategory": "shape"} for s in SHAPES]
    for scene in fine_grained_scenes(split, scenes):
        if kind == "grounding":
            items = [(None, t) for t in text.captions[scene.image_id]]
        else:
            items = text.refexps[scene.image_id]
        for sent_id, (target, t) in enumerate(items):
            phrases = t.phrases if kind == "grounding" else t.phrases[:1]  # refexp: the target only
            record_id = len(images) + 1
            images.append({
                "file_name": image_file_name(split, scene.image_id, cfg.image_format),
                "height": scene.size, "width": scene.size, "id": record_id,
                "original_img_id": scene.image_id, "caption": t.text, "dataset_name": "shapes",
                "sentence_id": sent_id, "template": t.kind, "num_objects": len(scene.objects),
                "tokens_positive_eval": [[[p.start, p.end]] for p in phrases],
            })
            spans: dict[int, list[list[int]]] = {}
            phrase_ids: dict[int, list[int]] = {}
            for pid, p in enumerate(phrases):
                for i in p.objects:
                    spans.setdefault(i, []).append([p.start, p.end])
                    phrase_ids.setdefault(i, []).append(pid)
            for i, s in spans.items():
                obj = scene.objects[i]
                box = _xywh(obj.visible_box)
                anns.append({
                    "id": len(anns) + 1, "image_id": record_id, "category_id": category_id(obj.shape),
                    "bbox": box, "area": box[2] * box[3], "iscrowd": 0,
                    "tokens_positive": s, "phrase_ids": phrase_ids[i],
                })
    return {"images": images, "annotations": anns, "categories": cats}


def detection_json(cfg, split, scenes) -> dict:
    """COCO detection; in train, held-out classes have no category and no image shows one
    (:func:`fine_grained_scenes`)."""
    shapes = SEEN_SHAPES if split == "train" else SHAPES
    cats = [{"id": category_id(s), "name": s, "supercategory": "shape", "seen": s not in HELD_OUT_SHAPES} for s in shapes]
    images, anns = [], []
    for scene in fine_grained_scenes(split, scenes):
        images.append({"id": scene.image_id, "file_name": image_file_name(split, scene.image_id, cfg.image_format),
                       "height": scene.size, "width": scene.size})
        for obj in scene.objects:
            if obj.shape not in shapes:
                continue
            box = _xywh(obj.visible_box)
            anns.append({"id": len(anns) + 1, "image_id": scene.image_id, "category_id": category_id(obj.shape),
                         "bbox": box, "area": box[2] * box[3], "iscrowd": 0,
                         "attributes": {"color": obj.color, "size": obj.size}})
    return {"images": images, "annotations": anns, "categories": cats,
            "info": {"held_out_categories": list(HELD_OUT_SHAPES) if split == "train" else []}}


def write_nlvr2(cfg, out: Path, split: str, scenes: list[SceneSpec]) -> list[dict]:
    """Pairs of this split's images with balanced true/false statements; images are linked
    (or copied) under nlvr2/images with NLVR2's file names."""
    rng = scene_rng(cfg.seed, split, -1, "nlvr2")
    n_items = max(4, int(len(scenes) * cfg.nlvr2_per_image))
    balance = {t: [0, 0] for t in NLVR2_TEMPLATES}
    records = []
    for k in range(n_items):
        template = NLVR2_TEMPLATES[k % len(NLVR2_TEMPLATES)]
        t_count, f_count = balance[template]
        want = rng.random() < 0.5 if t_count == f_count else t_count < f_count
        # Statement first (from a random pair), then the label, then a pair giving that label:
        # the words of a statement then carry no information about its label.
        statement = None
        for _ in range(PAIR_TRIES):
            a, b = rng.sample(range(len(scenes)), 2)
            statement = nlvr2_statement(template, scenes[a], scenes[b], rng)
            if statement is not None:
                break
        else:
            continue  # no pair offers this template (one-object scenes have no relation): skip it
        for _ in range(PAIR_TRIES):
            a, b = rng.sample(range(len(scenes)), 2)
            if statement.truth(scenes[a], scenes[b]) == want:
                break
        else:
            continue  # no pair has this label: the balance counter corrects the next items
        sentence, label = statement.text, want
        balance[template][0 if label else 1] += 1
        set_id, pair_id = k // 4, k % 4
        identifier = f"{split}-{set_id}-{pair_id}-0"
        record = {"identifier": identifier, "sentence": sentence, "label": "True" if label else "False",
                  "left_image_id": scenes[a].image_id, "right_image_id": scenes[b].image_id,
                  "template": template, "writer": "shapes", "synset": "shapes", "query": template}
        subdir = out / "nlvr2" / "images" / split
        if split == "train":
            record["directory"] = set_id % 100
            subdir = subdir / str(record["directory"])
        subdir.mkdir(parents=True, exist_ok=True)
        for side, scene in enumerate((scenes[a], scenes[b])):
            src = out / "images" / split / image_file_name(split, scene.image_id, cfg.image_format)
            _link_or_copy(src, subdir / f"{split}-{set_id}-{pair_id}-img{side}.{cfg.image_format}")
        records.append(record)
    return records


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)  # same bytes, no extra disk
    except OSError:
        shutil.copyfile(src, dst)


def write_webdataset(cfg, out: Path, split: str, scenes, text) -> list[str]:
    shard_dir = out / "webdataset"
    shard_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for start in range(0, len(scenes), WEBDATASET_SHARD_SIZE):
        name = f"shapes-{split}-{start // WEBDATASET_SHARD_SIZE:06d}.tar"
        with tarfile.open(shard_dir / name, "w") as tar:
            for scene in scenes[start:start + WEBDATASET_SHARD_SIZE]:
                key = f"{scene.image_id:012d}"
                caps = [t.text for t in text.captions[scene.image_id]]
                img = (out / "images" / split / image_file_name(split, scene.image_id, cfg.image_format)).read_bytes()
                meta = json.dumps({"image_id": scene.image_id, "captions": caps}).encode()
                for ext, data in ((cfg.image_format, img), ("txt", caps[0].encode()), ("json", meta)):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644  # mtime 0: reproducible bytes
                    tar.addfile(info, io.BytesIO(data))
        names.append(name)
    return names


def dump_json(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # json.dumps uses the C encoder; json.dump streams through the slow Python one.
    path.write_text(json.dumps(obj, separators=(",", ":")), encoding="utf-8")

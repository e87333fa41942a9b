"""Write the shapes data set: images plus every annotation file in its real format.

Layout of ``DIR`` (see also docs/datasets.md and the README.md written into DIR):

    images/{split}/shapes_{split}_{image_id:012d}.jpg     the scenes (128 px by default)
    captions/dataset_shapes.json                          Karpathy-split captions (5 per image)
    vqa/v2_OpenEnded_shapes_{split}_questions.json        VQAv2 questions
    vqa/v2_shapes_{split}_annotations.json                VQAv2 annotations (10 answers)
    nlvr2/{split}.json                                    NLVR2 JSON lines
    nlvr2/images/{split}/[{directory}/]{pair}-img{0,1}.jpg  NLVR2 image pairs (train has directories)
    mdetr_annotations/final_shapes_grounding_{split}.json Flickr30k-Entities-style phrase grounding
    mdetr_annotations/final_shapes_refexp_{split}.json    RefCOCO-style referring expressions
    detection/instances_{split}.json                      COCO detection
    webdataset/shapes-{split}-{shard:06d}.tar             image-text pairs (train split)
    tokenizer/tokenizer.json                              byte-level BPE trained on the train texts
    dataset.json, baselines.json, README.md
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import re
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from .captions import captions as make_captions
from .describe import Text
from .nlvr2 import NLVR2_TEMPLATES, nlvr2_statement
from .questions import Question, YesNoBalancer, annotator_answers, questions as make_questions
from .refexps import referring_expressions
from .render import encode, render
from .scene import SceneSpec, sample_scene, scene_rng
from .vocab import HELD_OUT_SHAPES, PLURALS, SEEN_SHAPES, SHAPES, category_id

SPLITS = ("train", "val", "test")
SIZE_PRESETS = {"tiny": 60, "small": 1000, "default": 10000, "large": 50000}
IMAGE_TEMPLATE = "{split}/shapes_{split}_{image_id:012d}.{ext}"
WEBDATASET_SHARD_SIZE = 1000
OUTPUT_DIRS = ("images", "captions", "vqa", "nlvr2", "mdetr_annotations", "detection", "webdataset", "tokenizer")
HELD_OUT_WORDS = frozenset(HELD_OUT_SHAPES) | {PLURALS[s] for s in HELD_OUT_SHAPES}


@dataclass
class ShapesConfig:
    """size: training images; val and test get size // 10 each (at least 20)."""

    size: int = SIZE_PRESETS["default"]
    seed: int = 0
    image_size: int = 128
    image_format: str = "jpg"
    workers: int = 2
    captions_per_image: int = 5
    questions_per_image: int = 6
    refexp_targets_per_image: int = 3
    nlvr2_per_image: float = 0.5
    vocab_size: int = 1000
    webdataset: bool = True

    def split_sizes(self) -> dict[str, int]:
        held = max(20, self.size // 10)
        return {"train": self.size, "val": held, "test": held}


def parse_size(value: str | int) -> int:
    """An int, or a preset name: tiny (60), small (1000), default (10000), large (50000)."""
    if isinstance(value, int):
        n = value
    elif str(value) in SIZE_PRESETS:
        n = SIZE_PRESETS[str(value)]
    else:
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"--size must be an integer or one of {sorted(SIZE_PRESETS)}, got {value!r}") from None
    if n < 10:
        raise ValueError(f"--size must be at least 10 training images, got {n}")
    return n


# ---------------------------------------------------------------------- rendering (workers)
# Work is cut into fixed chunks of images; each chunk draws its scenes and their text with
# its own generators and yes/no balancer, so the output does not depend on the number of
# worker processes.
CHUNK = 250


def _render_chunk(job) -> tuple[list[SceneSpec], "_SplitText"]:
    cfg, out, split, start, stop, first_id = job
    text = _SplitText(cfg, split)
    scenes = []
    for index in range(start, stop):
        image_id = first_id + index
        scene = sample_scene(scene_rng(cfg.seed, split, index), image_id, split, cfg.image_size)
        image = render(scene)
        path = Path(out) / "images" / IMAGE_TEMPLATE.format(split=split, image_id=image_id, ext=cfg.image_format)
        path.write_bytes(encode(image, cfg.image_format))
        text.add(index, scene)
        scene.__dict__.pop("_describe_cache", None)  # not worth pickling back
        scenes.append(scene)
    return scenes, text


def _single_threaded_worker() -> None:
    # Measured: forked workers that inherit torch's OpenMP pool (2 threads) run at half
    # speed on a 2-core machine; one thread per worker process restores full use of the cores.
    import torch

    torch.set_num_threads(1)


def _render_split(cfg: ShapesConfig, out: Path, split: str, n: int, first_id: int, pool):
    """Render and describe ``n`` images of ``split``; returns (scenes, merged text)."""
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    jobs = [(cfg, str(out), split, a, min(a + CHUNK, n), first_id) for a in range(0, n, CHUNK)]
    results = map(_render_chunk, jobs) if pool is None else pool.imap(_render_chunk, jobs)
    scenes, text = [], _SplitText(cfg, split)
    for chunk_scenes, chunk_text in results:
        scenes.extend(chunk_scenes)
        text.merge(chunk_text)
    return scenes, text


def image_file_name(split: str, image_id: int, ext: str) -> str:
    return f"shapes_{split}_{image_id:012d}.{ext}"


# ---------------------------------------------------------------------- annotation builders
def _xywh(box) -> list[float]:
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]


_HELD_OUT_RE = re.compile(r"\b(" + "|".join(sorted(HELD_OUT_WORDS, key=len, reverse=True)) + r")\b")


def _names_held_out(text: str) -> bool:
    return _HELD_OUT_RE.search(text) is not None


class _SplitText:
    """All the text of one split, built scene by scene."""

    def __init__(self, cfg: ShapesConfig, split: str):
        self.cfg, self.split = cfg, split
        self.balancer = YesNoBalancer()
        self.captions: dict[int, list[Text]] = {}
        self.questions: dict[int, list[Question]] = {}
        self.answers: dict[int, list[list[str]]] = {}
        self.refexps: dict[int, list[tuple[int, Text]]] = {}

    def add(self, index: int, scene: SceneSpec) -> None:
        rng = scene_rng(self.cfg.seed, self.split, index, "text")
        self.captions[scene.image_id] = make_captions(scene, rng, self.cfg.captions_per_image)
        qs = make_questions(scene, rng, self.balancer, self.cfg.questions_per_image)
        self.questions[scene.image_id] = qs
        self.answers[scene.image_id] = [annotator_answers(q, rng) for q in qs]
        self.refexps[scene.image_id] = referring_expressions(scene, rng, self.cfg.refexp_targets_per_image)

    def merge(self, other: "_SplitText") -> None:
        for name in ("captions", "questions", "answers", "refexps"):
            getattr(self, name).update(getattr(other, name))


def _karpathy(cfg, scenes_by_split, texts_by_split) -> dict:
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


def _vqa(cfg, split, scenes, text) -> tuple[dict, dict]:
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


def _mdetr(cfg, split, scenes, text, kind) -> dict:
    """MDETR-style COCO JSON: one "image" entry per (image, sentence) pair."""
    drop_held_out = split != "test"
    images, anns, cats = [], [], [{"id": category_id(s), "name": s, "supercategory": "shape"} for s in SHAPES]
    for scene in scenes:
        if kind == "grounding":
            items = [(None, t) for t in text.captions[scene.image_id]]
        else:
            items = text.refexps[scene.image_id]
        for sent_id, (target, t) in enumerate(items):
            if drop_held_out and _names_held_out(t.text):
                continue
            phrases = t.phrases if kind == "grounding" else t.phrases[:1]  # refexp: the target only
            if kind == "grounding" and drop_held_out:
                if any(scene.objects[i].shape in HELD_OUT_SHAPES for p in phrases for i in p.objects):
                    continue  # "three shapes" may cover a held-out object: never label it in training
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


def _detection(cfg, split, scenes) -> dict:
    """COCO detection; outside test, held-out classes have no category and no boxes."""
    shapes = SHAPES if split == "test" else SEEN_SHAPES
    cats = [{"id": category_id(s), "name": s, "supercategory": "shape", "seen": s not in HELD_OUT_SHAPES} for s in shapes]
    images, anns = [], []
    for scene in scenes:
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
            "info": {"held_out_categories": list(HELD_OUT_SHAPES) if split != "test" else []}}


def _nlvr2(cfg, out: Path, split: str, scenes: list[SceneSpec]) -> list[dict]:
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
        while statement is None:
            a, b = rng.sample(range(len(scenes)), 2)
            statement = nlvr2_statement(template, scenes[a], scenes[b], rng)
        for _ in range(300):
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


def _webdataset(cfg, out: Path, split: str, scenes, text) -> list[str]:
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


def _dump(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # json.dumps uses the C encoder; json.dump streams through the slow Python one.
    path.write_text(json.dumps(obj, separators=(",", ":")), encoding="utf-8")


# ---------------------------------------------------------------------- entry point
def generate(out: str | Path, cfg: ShapesConfig | None = None, progress: bool = False) -> dict:
    """Write the whole data set into ``out``; returns the metadata written to dataset.json.

    Folders of ``out`` with the generator's names (images, vqa, ... see OUTPUT_DIRS) are
    replaced; anything else in ``out`` is left alone.
    """
    from ..tokenizer import train_shapes_tokenizer
    from .baselines import compute_baselines
    from .readme import write_readme

    cfg = cfg or ShapesConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Files of an earlier, larger run would linger (and a shard glob would pick them up):
    # clear the folders this generator owns, and only those.
    for name in OUTPUT_DIRS:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    t0 = time.perf_counter()
    sizes = cfg.split_sizes()
    first_ids = {"train": 1, "val": 1 + sizes["train"], "test": 1 + sizes["train"] + sizes["val"]}
    pool = None
    if cfg.workers > 1:
        ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
        pool = ctx.Pool(cfg.workers, initializer=_single_threaded_worker)
    try:
        scenes, texts = {}, {}
        for split in SPLITS:
            t = time.perf_counter()
            scenes[split], texts[split] = _render_split(cfg, out, split, sizes[split], first_ids[split], pool)
            if progress:
                print(f"rendered and described {sizes[split]} {split} images in {time.perf_counter() - t:.1f} s", flush=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    _dump(_karpathy(cfg, scenes, texts), out / "captions" / "dataset_shapes.json")
    counts: dict[str, dict[str, int]] = {}
    shard_files: dict[str, list[str]] = {}
    for split in SPLITS:
        q, a = _vqa(cfg, split, scenes[split], texts[split])
        _dump(q, out / "vqa" / f"v2_OpenEnded_shapes_{split}_questions.json")
        _dump(a, out / "vqa" / f"v2_shapes_{split}_annotations.json")
        ground = _mdetr(cfg, split, scenes[split], texts[split], "grounding")
        refexp = _mdetr(cfg, split, scenes[split], texts[split], "refexp")
        _dump(ground, out / "mdetr_annotations" / f"final_shapes_grounding_{split}.json")
        _dump(refexp, out / "mdetr_annotations" / f"final_shapes_refexp_{split}.json")
        det = _detection(cfg, split, scenes[split])
        _dump(det, out / "detection" / f"instances_{split}.json")
        nlvr2 = _nlvr2(cfg, out, split, scenes[split])
        (out / "nlvr2").mkdir(exist_ok=True)
        with open(out / "nlvr2" / f"{split}.json", "w", encoding="utf-8") as f:
            for r in nlvr2:
                f.write(json.dumps(r) + "\n")
        shards = _webdataset(cfg, out, split, scenes[split], texts[split]) if cfg.webdataset and split == "train" else []
        if shards:
            shard_files[split] = shards
        counts[split] = {
            "images": len(scenes[split]),
            "objects": sum(len(s.objects) for s in scenes[split]),
            "captions": sum(len(v) for v in texts[split].captions.values()),
            "vqa_questions": len(q["questions"]),
            "grounding_records": len(ground["images"]),
            "refexp_records": len(refexp["images"]),
            "detection_boxes": len(det["annotations"]),
            "nlvr2_items": len(nlvr2),
            "webdataset_shards": len(shards),
        }
    train_texts = [t.text for ts in texts["train"].captions.values() for t in ts]
    train_texts += [q.question for qs in texts["train"].questions.values() for q in qs]
    train_texts += [t.text for rs in texts["train"].refexps.values() for _, t in rs]
    train_texts += [r["sentence"] for r in _read_jsonl(out / "nlvr2" / "train.json")]
    tokenizer = train_shapes_tokenizer(train_texts, vocab_size=cfg.vocab_size)
    tokenizer.save(out / "tokenizer")
    meta = {
        "name": "shapes",
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "splits": counts,
        "shapes": list(SHAPES),
        "held_out_shapes": list(HELD_OUT_SHAPES),
        "image_template": IMAGE_TEMPLATE.replace("{ext}", cfg.image_format),
        "webdataset_shards": shard_files,
        "tokenizer_vocab_size": tokenizer.vocab_size,
        "generation_seconds": None,
    }
    _dump(meta, out / "dataset.json")  # the baselines read it
    baselines = compute_baselines(out)
    _dump(baselines, out / "baselines.json")
    # The time covers everything the command does: images, files, tokenizer, baselines.
    meta["generation_seconds"] = round(time.perf_counter() - t0, 1)
    _dump(meta, out / "dataset.json")
    write_readme(out, meta, baselines)
    return meta


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]

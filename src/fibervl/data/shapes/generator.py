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

import json
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path

from .captions import captions as make_captions
from .config import IMAGE_TEMPLATE, SPLITS, ShapesConfig
from .describe import Text
from .formats import (
    detection_json, dump_json, karpathy_json, mdetr_json, vqa_json, write_nlvr2, write_webdataset,
)
from .questions import Question, YesNoBalancer, annotator_answers, questions as make_questions
from .refexps import referring_expressions
from .render import encode, render
from .scene import SceneSpec, sample_scene, scene_rng
from .vocab import HELD_OUT_SHAPES, SHAPES

OUTPUT_DIRS = ("images", "captions", "vqa", "nlvr2", "mdetr_annotations", "detection", "webdataset", "tokenizer")


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
        scene = sample_scene(scene_rng(cfg.seed, split, index), image_id, split, cfg.image_size,
                             cfg.min_objects, cfg.max_objects, tuple(cfg.backgrounds))
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


# ---------------------------------------------------------------------- entry point
def generate(out: str | Path, cfg: ShapesConfig | None = None, progress: bool = False) -> dict:
    """Write the whole data set into ``out``; returns the metadata written to dataset.json.

    Folders of ``out`` with the generator's names (images, vqa, ... see OUTPUT_DIRS) are
    replaced; anything else in ``out`` is left alone.
    """
    from ..tokenizer import train_shapes_tokenizer
    # The data set ships its baselines (baselines.json, README.md); they are scored with the
    # metrics, the one import of this package from a layer above, made here where it is used.
    from ...metrics.baselines import compute_baselines
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
    dump_json(karpathy_json(cfg, scenes, texts), out / "captions" / "dataset_shapes.json")
    counts: dict[str, dict[str, int]] = {}
    shard_files: dict[str, list[str]] = {}
    for split in SPLITS:
        q, a = vqa_json(cfg, split, scenes[split], texts[split])
        dump_json(q, out / "vqa" / f"v2_OpenEnded_shapes_{split}_questions.json")
        dump_json(a, out / "vqa" / f"v2_shapes_{split}_annotations.json")
        ground = mdetr_json(cfg, split, scenes[split], texts[split], "grounding")
        refexp = mdetr_json(cfg, split, scenes[split], texts[split], "refexp")
        dump_json(ground, out / "mdetr_annotations" / f"final_shapes_grounding_{split}.json")
        dump_json(refexp, out / "mdetr_annotations" / f"final_shapes_refexp_{split}.json")
        det = detection_json(cfg, split, scenes[split])
        dump_json(det, out / "detection" / f"instances_{split}.json")
        nlvr2 = write_nlvr2(cfg, out, split, scenes[split])
        (out / "nlvr2").mkdir(exist_ok=True)
        with open(out / "nlvr2" / f"{split}.json", "w", encoding="utf-8") as f:
            for r in nlvr2:
                f.write(json.dumps(r) + "\n")
        shards = write_webdataset(cfg, out, split, scenes[split], texts[split]) if cfg.webdataset and split == "train" else []
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
    dump_json(meta, out / "dataset.json")  # the baselines read it
    baselines = compute_baselines(out)
    dump_json(baselines, out / "baselines.json")
    # The time covers everything the command does: images, files, tokenizer, baselines.
    meta["generation_seconds"] = round(time.perf_counter() - t0, 1)
    dump_json(meta, out / "dataset.json")
    write_readme(out, meta, baselines)
    return meta


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]

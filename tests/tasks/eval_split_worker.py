"""Subprocess entry point of tests/tasks/test_eval_split.py: every task's evaluation on a tiny
shapes set with untrained micro models, in one process or split across a torchrun group.

    python eval_split_worker.py SHAPES_ROOT OUT_DIR
    torchrun --nproc_per_node 2 eval_split_worker.py SHAPES_ROOT OUT_DIR

Each rank writes ``OUT_DIR/rank{r}_world{w}.json``: per evaluation its metrics (timings left out),
what it returns besides (captions, detections) and how many inputs of each kind this rank's
model ran (``calls``: rows through each model entry point), so the test can check that the
processes share the work without doing any of it twice.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path

import torch

from fibervl.config import DetectionConfig
from fibervl.data import Tokenizer
from fibervl.data.readers.coco_detection import CocoDetectionReader
from fibervl.data.readers.lvis import LvisReader
from fibervl.data.readers.odinw import OdinwReader
from fibervl.data.shapes import ShapesDataset
from fibervl.engine import distributed as D
from fibervl.metrics.cider import corpus_cider
from fibervl.modeling.fiber import FiberModel
from fibervl.tasks.caption import evaluate_captioning
from fibervl.tasks.decoding import DecodeConfig
from fibervl.tasks.grounding import evaluate_detection, evaluate_grounding, evaluate_odinw, evaluate_refexp
from fibervl.tasks.retrieval import evaluate_itc_retrieval, evaluate_retrieval
from fibervl.testing.configs import micro_config
from fibervl.testing.models import set_fusion_gates

# Odd counts: the two shares differ in size. Detection: 2 classes a prompt, so several prompts.
LIMIT = 5
FINE = dict(image_size=128, max_len=16, limit=LIMIT, batch_size=2)


def counted(model, names: tuple[str, ...], calls: Counter):
    """Count the rows (images, texts or pairs) that go through ``model``'s entry points ``names``."""
    for name in names:
        method = getattr(model, name)

        def wrapper(*args, _method=method, _name=name, **kwargs):
            first = next((a for a in (*args, kwargs.get("image_prefix")) if isinstance(a, torch.Tensor)), None)
            calls[_name] += 0 if first is None else first.shape[0]
            return _method(*args, **kwargs)

        setattr(model, name, wrapper)
    return model


def _no_seconds(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.endswith("seconds")}


def fit_to_tokenizer(config, tokenizer: Tokenizer):
    """``config`` with the vocabulary and special ids of ``tokenizer``."""
    return config.replace(text=dataclasses.replace(
        config.text, vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.mask_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))


def coarse_model(tokenizer: Tokenizer) -> FiberModel:
    torch.manual_seed(0)
    model = FiberModel(fit_to_tokenizer(micro_config().replace(heads=("itc", "itm", "mlm", "caption")), tokenizer)).eval()
    return set_fusion_gates(model, 0.5)


def fine_model(tokenizer: Tokenizer) -> FiberModel:
    """An untrained micro grounding detector whose scores start near 0.5, so that it detects something."""
    micro = micro_config()
    fine = micro.replace(vision=dataclasses.replace(micro.vision, image_size=128, feature_norms=(1, 2, 3)), heads=(),
                         detection=DetectionConfig(channels=16, num_blocks=1, num_groups=4,
                                                   anchor_sizes=(16, 32, 64, 128, 256), max_query_len=16))
    torch.manual_seed(0)
    model = FiberModel(fit_to_tokenizer(fine, tokenizer)).eval()
    with torch.no_grad():
        model.detector.head.bias0.zero_()
    return set_fusion_gates(model, 0.5)


def retrieval(shapes: ShapesDataset, tokenizer: Tokenizer, out: Path) -> dict:
    # small embedding batches (in one process too), so that 5 images and 25 texts make several
    import fibervl.tasks.retrieval as task

    task.EMBED_IMAGE_BATCH, task.EMBED_TEXT_BATCH = 2, 4
    calls: Counter = Counter()
    model = counted(coarse_model(tokenizer), ("encode_image", "encode_text", "image_prefix", "fuse"), calls)
    reader = shapes.captions("val")
    metrics = evaluate_retrieval(model, tokenizer, reader, 64, 16, limit=LIMIT, rerank_k=3, itm_batch_size=2,
                                 modes=("itc", "itm", "rerank@2"), prefix_dir=out / "prefixes")
    itc = evaluate_itc_retrieval(model, tokenizer, reader, 64, 16, limit=LIMIT)
    return {"metrics": {**_no_seconds(metrics), **{f"itc_only/{k}": v for k, v in itc.items()}}, "calls": calls}


def caption(shapes: ShapesDataset, tokenizer: Tokenizer, out: Path) -> dict:
    """Scored by corpus CIDEr-D in Python instead of pycocoevalcap (whose Java programs take 15 s
    here): what is checked is which captions reach the scorer, in which order, and where it runs."""
    import fibervl.metrics.caption as caption_metrics

    calls: Counter = Counter()

    def scores(predictions: dict, references: dict, spice: bool = False) -> dict:
        calls["caption_scores"] += 1
        mean, per_image = corpus_cider(predictions, references)
        return {"cider_d": mean, "per_image": [[k, v] for k, v in per_image.items()], "scored_by_rank": D.get_rank()}

    real, caption_metrics.caption_scores = caption_metrics.caption_scores, scores
    try:
        model = counted(coarse_model(tokenizer), ("caption_image",), calls)
        metrics, predictions = evaluate_captioning(model, tokenizer, shapes.captions("val"), 64,
                                                   DecodeConfig(beam_size=2, max_length=5), limit=LIMIT, batch_size=2)
    finally:
        caption_metrics.caption_scores = real
    return {"metrics": metrics, "returned": predictions, "calls": calls}


def grounding(shapes: ShapesDataset, tokenizer: Tokenizer, out: Path) -> dict:
    calls: Counter = Counter()
    model = counted(fine_model(tokenizer), ("detect",), calls)
    metrics = evaluate_grounding(model, tokenizer, shapes.grounding("val"), protocol="both", **FINE)
    return {"metrics": metrics, "calls": calls}


def refexp(shapes: ShapesDataset, tokenizer: Tokenizer, out: Path) -> dict:
    calls: Counter = Counter()
    model = counted(fine_model(tokenizer), ("detect",), calls)
    metrics = evaluate_refexp(model, tokenizer, shapes.refexp("test"), group_of=shapes.expression_group, **FINE)
    return {"metrics": metrics, "calls": calls}


def _detection(reader, category_ids, tokenizer: Tokenizer) -> dict:
    calls: Counter = Counter()
    model = counted(fine_model(tokenizer), ("detect",), calls)
    found: list = []
    metrics = evaluate_detection(model, tokenizer, reader, category_ids, chunk_size=2, results=found, **FINE)
    return {"metrics": metrics, "returned": found, "calls": calls}


def detection_seen(shapes: ShapesDataset, tokenizer: Tokenizer, out: Path) -> dict:
    return _detection(shapes.detection("val"), shapes.seen_category_ids, tokenizer)


def detection_zero_shot(shapes: ShapesDataset, tokenizer: Tokenizer, out: Path) -> dict:
    return _detection(shapes.detection("test"), shapes.held_out_category_ids, tokenizer)


def detection_coco(shapes: ShapesDataset, tokenizer: Tokenizer, out: Path) -> dict:
    reader = CocoDetectionReader(out / "layouts" / "coco" / "annotations" / "instances_val2017.json",
                                 out / "layouts" / "coco" / "val2017")
    return _detection(reader, sorted(reader.categories), tokenizer)


def detection_lvis(shapes: ShapesDataset, tokenizer: Tokenizer, out: Path) -> dict:
    reader = LvisReader(out / "layouts" / "lvis" / "lvis_v1_val.json", out / "layouts" / "coco")
    return _detection(reader, sorted(reader.categories), tokenizer)


def detection_odinw(shapes: ShapesDataset, tokenizer: Tokenizer, out: Path) -> dict:
    calls: Counter = Counter()
    model = counted(fine_model(tokenizer), ("detect",), calls)
    readers = {"Aquarium": OdinwReader(out / "layouts" / "odinw" / "Aquarium" / "raw" / "valid")}
    metrics = evaluate_odinw(model, tokenizer, readers, chunk_size=2, **FINE)
    return {"metrics": metrics, "calls": calls}


def metric_error(shapes: ShapesDataset, tokenizer: Tokenizer, out: Path) -> dict:
    """A metric that fails on rank 0 fails on every rank (rather than leaving the others waiting)."""
    def broken_metric():
        raise ValueError("no ground truth")

    try:
        D.computed_once(broken_metric)
    except Exception as e:  # noqa: BLE001 - what each rank raises is the result
        return {"raised": f"{type(e).__name__}: {e}"}
    return {"raised": None}


EVALUATIONS = {f.__name__: f for f in (retrieval, caption, grounding, refexp, detection_seen, detection_zero_shot,
                                       detection_coco, detection_lvis, detection_odinw, metric_error)}


def main(shapes_root: Path, out: Path) -> None:
    torch.set_num_threads(1)
    D.init_distributed("cpu")
    rank, world = D.get_rank(), D.get_world_size()
    shapes = ShapesDataset(shapes_root)
    tokenizer = Tokenizer.from_pretrained(shapes_root / "tokenizer")
    if rank == 0 and not (out / "layouts").exists():  # COCO, LVIS and Roboflow files cut from the shapes set
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
        from official_layouts import write_coco, write_lvis, write_odinw

        for write in (write_coco, write_lvis, write_odinw):
            write(shapes, out / "layouts", LIMIT + 2)
        fine_model(tokenizer).save_pretrained(out / "fine_model")  # for the test of `evaluate detect` itself
    D.barrier()
    report = {name: evaluate(shapes, tokenizer, out) for name, evaluate in EVALUATIONS.items()}
    (out / f"rank{rank}_world{world}.json").write_text(json.dumps(report))
    D.destroy_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

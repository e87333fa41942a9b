"""COCO-style detection AP through pycocotools (optional extra ``eval``, imported lazily).

:func:`coco_ap` evaluates COCO-format results (``{"image_id", "category_id", "bbox": xywh,
"score"}``) against a COCO-format ground truth, optionally restricted to some categories and
images. :func:`ap_by_frequency` adds an LVIS-style rare / common / frequent breakdown from the
categories' ``frequency`` field ("r" / "c" / "f"): each group's AP is the COCO AP over that
group's categories. This is the COCO protocol on LVIS-style groups, not the LVIS federated
protocol (which also scores only images whose labels are verified for a category): that is
:func:`fibervl.metrics.lvis.lvis_ap`. :func:`average_over_datasets` averages the AP of several
data sets (ODinW), :func:`write_results` writes detections as the official tools read them.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["coco_ap", "ap_by_frequency", "average_over_datasets", "write_results", "STAT_NAMES"]

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ImportError("detection AP needs pycocotools: pip install pycocotools (or fibervl[eval])") from None
    return COCO, COCOeval


def _coco_from_dict(gt: dict):
    COCO, _ = _pycocotools()
    coco = COCO()
    data = copy.deepcopy(gt)
    for ann in data.get("annotations", []):
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    data.setdefault("info", {})
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_ap(gt: dict, results: Sequence[dict], category_ids: Sequence[int] | None = None,
            image_ids: Sequence | None = None) -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl in percent (COCO's -1 for "no such ground truth" is kept).

    Args:
        gt: a COCO detection dict (``images``, ``annotations``, ``categories``).
        results: detections, boxes xywh in the ground truth's pixel frame.
        category_ids / image_ids: evaluate only these (default: all of ``gt``).
    """
    _, COCOeval = _pycocotools()
    coco_gt = _coco_from_dict(gt)
    cats = list(category_ids) if category_ids is not None else sorted(coco_gt.getCatIds())
    imgs = list(image_ids) if image_ids is not None else sorted(coco_gt.getImgIds())
    keep = [r for r in results if r["category_id"] in set(cats) and r["image_id"] in set(imgs)]
    if not keep:
        # pycocotools cannot load an empty result list; no detection means AP 0 where there is
        # ground truth.
        has_gt = any(a["category_id"] in set(cats) and a["image_id"] in set(imgs) for a in gt["annotations"])
        return {name: (0.0 if has_gt else -1.0) for name in STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(keep))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.catIds = cats
        ev.params.imgIds = imgs
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v * 100.0) if v >= 0 else -1.0 for name, v in zip(STAT_NAMES, ev.stats[:6])}


def ap_by_frequency(gt: dict, results: Sequence[dict], category_ids: Sequence[int] | None = None,
                    image_ids: Sequence | None = None) -> dict[str, float]:
    """``{"APr", "APc", "APf"}``: AP over the categories whose ``frequency`` is r / c / f (only
    groups that have categories among ``category_ids``). Empty when no category has ``frequency``."""
    wanted = set(category_ids) if category_ids is not None else None
    groups: dict[str, list[int]] = {}
    for c in gt["categories"]:
        f = c.get("frequency")
        if f in ("r", "c", "f") and (wanted is None or c["id"] in wanted):
            groups.setdefault(f, []).append(c["id"])
    return {f"AP{f}": coco_ap(gt, results, ids, image_ids)["AP"] for f, ids in sorted(groups.items())}


def average_over_datasets(per_dataset: Mapping[str, Mapping[str, float]], key: str = "AP") -> dict[str, float]:
    """ODinW's summary: ``{"AP": mean of the data sets' AP, "AP_<name>": each one's, "datasets": N}``.
    A data set without ground truth (AP -1) is named but left out of the mean."""
    out: dict[str, float] = {f"{key}_{name}": float(m[key]) for name, m in per_dataset.items()}
    scored = [float(m[key]) for m in per_dataset.values() if m[key] >= 0]
    out[key] = sum(scored) / len(scored) if scored else -1.0
    out["datasets"] = len(scored)
    return out


def write_results(results: Sequence[dict], path: str | Path) -> Path:
    """Detections as the COCO / LVIS results file (a JSON list of ``{"image_id", "category_id",
    "bbox": [x, y, w, h], "score"}``, boxes in the original image's pixels) that pycocotools'
    ``COCO.loadRes`` and the ``lvis`` package's ``LVISResults`` read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = ("image_id", "category_id", "bbox", "score")
    rows = [{k: r[k] for k in keys} for r in results]
    path.write_text(json.dumps(rows) + "\n", encoding="utf-8")
    return path

"""LVIS federated detection AP (Gupta et al. 2019), box version of the ``lvis`` package's
``LVISEval``, reimplemented (the package needs numpy < 2).

LVIS labels each image for some categories only, so a detection is judged only where the
image's labels say something of its category:

* a detection of a category neither present in the image (one of its annotations) nor verified
  absent (the image's ``neg_category_ids``) is dropped: nobody looked for that class there;
* an unmatched detection of a category in the image's ``not_exhaustive_category_ids`` is
  ignored rather than a false positive: some of its instances were left unboxed;
* each image keeps its 300 best detections over all categories (COCO: 100 per image and
  category), and there are no crowd regions.

The rest is COCO's: greedy matching by score at IoU 0.50:0.95, precision interpolated at 101
recall points, AP the mean over categories that have ground truth; APr / APc / APf average the
categories whose ``frequency`` is "r" / "c" / "f" (rare / common / frequent in LVIS training).
Areas come from the annotations' ``area`` (LVIS: the mask's), else the box's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

__all__ = ["lvis_ap", "LVIS_STAT_NAMES", "MAX_DETS"]

MAX_DETS = 300
LVIS_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR@300")
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
AREA_RANGES = {"all": (0.0, 1e10), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e10)}


def _iou_xywh(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``[D, 4]`` x ``[G, 4]`` xywh -> ``[D, G]`` IoU (no crowd)."""
    d0, g0 = dt[:, None, :2], gt[None, :, :2]
    d1, g1 = d0 + dt[:, None, 2:], g0 + gt[None, :, 2:]
    wh = (np.minimum(d1, g1) - np.maximum(d0, g0)).clip(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = (dt[:, 2] * dt[:, 3])[:, None] + (gt[:, 2] * gt[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _match(dts: list[dict], gts: list[dict], area: tuple[float, float], not_exhaustive: bool):
    """One image and category: ``(scores [D], matched [T, D], ignored [T, D], gt_count)`` with
    the detections best first (``LVISEval.evaluate_img``)."""
    lo, hi = area
    gt_ig = np.array([bool(g["ignore"]) or not lo <= g["area"] <= hi for g in gts], dtype=bool)
    g_order = np.argsort(gt_ig, kind="mergesort")  # ignored ground truth last
    gt_ig = gt_ig[g_order]
    d_order = np.argsort([-d["score"] for d in dts], kind="mergesort")
    dts = [dts[i] for i in d_order]
    if gts and dts:
        ious = _iou_xywh(np.array([d["bbox"] for d in dts], float), np.array([gts[i]["bbox"] for i in g_order], float))
    n_t, n_d, n_g = len(IOU_THRESHOLDS), len(dts), len(gts)
    gt_taken = np.zeros((n_t, n_g), dtype=bool)
    matched = np.zeros((n_t, n_d), dtype=bool)
    ignored = np.zeros((n_t, n_d), dtype=bool)
    for t, thr in enumerate(IOU_THRESHOLDS if gts and dts else ()):
        for d in range(n_d):
            best, m = min(thr, 1 - 1e-10), -1
            for g in range(n_g):
                if gt_taken[t, g]:
                    continue
                if m > -1 and not gt_ig[m] and gt_ig[g]:
                    break  # matched a counted box; only ignored ones remain
                if ious[d, g] < best:
                    continue
                best, m = ious[d, g], g
            if m > -1:
                matched[t, d], gt_taken[t, m], ignored[t, d] = True, True, gt_ig[m]
    out_of_range = np.array([not lo <= d["area"] <= hi for d in dts], dtype=bool)
    ignored |= ~matched & (out_of_range | not_exhaustive)[None, :]
    return np.array([d["score"] for d in dts], float), matched, ignored, int((~gt_ig).sum())


def _precision(scores: np.ndarray, matched: np.ndarray, ignored: np.ndarray, n_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """Detections of one category over all images -> ``(precision [T, R], recall [T])``."""
    order = np.argsort(-scores, kind="mergesort")
    matched, ignored = matched[:, order], ignored[:, order]
    tp = np.cumsum(matched & ~ignored, axis=1).astype(float)
    fp = np.cumsum(~matched & ~ignored, axis=1).astype(float)
    precision = np.zeros((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)))
    recall = np.zeros(len(IOU_THRESHOLDS))
    for t in range(len(IOU_THRESHOLDS)):
        if tp.shape[1] == 0:
            continue
        rc = tp[t] / n_gt
        pr = tp[t] / (fp[t] + tp[t] + np.spacing(1))
        pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope: the best at any higher recall
        recall[t] = rc[-1]
        at = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
        valid = at < len(pr)
        precision[t, valid] = pr[at[valid]]
    return precision, recall


def _limit_per_image(results: Sequence[dict], max_dets: int) -> list[dict]:
    by_image: dict = defaultdict(list)
    for r in results:
        by_image[r["image_id"]].append(r)
    kept = []
    for dets in by_image.values():
        kept.extend(dets if len(dets) <= max_dets else sorted(dets, key=lambda r: r["score"], reverse=True)[:max_dets])
    return kept


def lvis_ap(gt: dict, results: Sequence[dict], category_ids: Sequence[int] | None = None,
            image_ids: Sequence | None = None, max_dets: int = MAX_DETS) -> dict[str, float]:
    """LVIS federated AP / AP50 / AP75 / APs / APm / APl / APr / APc / APf and AR@300 in percent
    (-1 where no category has ground truth).

    Args:
        gt: an LVIS dict (``images`` with ``neg_category_ids`` / ``not_exhaustive_category_ids``,
            ``annotations``, ``categories`` with ``frequency``).
        results: detections ``{"image_id", "category_id", "bbox": xywh, "score"}``.
        category_ids / image_ids: evaluate only these (default: all of ``gt``).
    """
    cats = sorted(category_ids) if category_ids is not None else sorted(c["id"] for c in gt["categories"])
    imgs = sorted(set(image_ids) if image_ids is not None else {i["id"] for i in gt["images"]})
    cat_set, img_set = set(cats), set(imgs)
    images = {i["id"]: i for i in gt["images"] if i["id"] in img_set}
    negative = {i: set(im.get("neg_category_ids", ())) for i, im in images.items()}
    not_exhaustive = {i: set(im.get("not_exhaustive_category_ids", ())) for i, im in images.items()}
    gts: dict = defaultdict(list)
    present: dict = defaultdict(set)
    for a in gt["annotations"]:
        if a["image_id"] in img_set and a["category_id"] in cat_set:
            area = a["area"] if "area" in a else a["bbox"][2] * a["bbox"][3]
            gts[a["image_id"], a["category_id"]].append({"bbox": a["bbox"], "area": area, "ignore": a.get("ignore", 0)})
            present[a["image_id"]].add(a["category_id"])
    dts: dict = defaultdict(list)
    for r in _limit_per_image(results, max_dets):
        img, cat = r["image_id"], r["category_id"]
        if img not in images or cat not in cat_set:
            continue
        if cat not in present[img] and cat not in negative[img]:
            continue  # the image's labels say nothing of this category
        x, y, w, h = r["bbox"]
        dts[img, cat].append({"bbox": [x, y, w, h], "area": w * h, "score": r["score"]})

    n_t, n_r = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
    precision = -np.ones((n_t, n_r, len(cats), len(AREA_RANGES)))
    recall = -np.ones((n_t, len(cats), len(AREA_RANGES)))
    rank = {img: n for n, img in enumerate(imgs)}
    images_of: dict = defaultdict(set)
    for img, cat in [*gts, *dts]:
        images_of[cat].add(img)
    for k, cat in enumerate(cats):
        pairs = sorted(images_of[cat], key=rank.__getitem__)  # image order, as LVISEval concatenates
        for a, area in enumerate(AREA_RANGES.values()):
            per_image = [_match(dts.get((img, cat), []), gts.get((img, cat), []), area, cat in not_exhaustive[img])
                         for img in pairs]
            n_gt = sum(p[3] for p in per_image)
            if n_gt == 0:
                continue
            scores = np.concatenate([p[0] for p in per_image])
            matched = np.concatenate([p[1] for p in per_image], axis=1)
            ignored = np.concatenate([p[2] for p in per_image], axis=1)
            precision[:, :, k, a], recall[:, k, a] = _precision(scores, matched, ignored, n_gt)

    def mean(values: np.ndarray) -> float:
        kept = values[values > -1]
        return float(kept.mean() * 100.0) if kept.size else -1.0

    frequency = {c["id"]: c.get("frequency") for c in gt["categories"]}
    out = {
        "AP": mean(precision[..., 0]), "AP50": mean(precision[0, ..., 0]), "AP75": mean(precision[5, ..., 0]),
        "APs": mean(precision[..., 1]), "APm": mean(precision[..., 2]), "APl": mean(precision[..., 3]),
    }
    for group in ("r", "c", "f"):
        members = [k for k, c in enumerate(cats) if frequency.get(c) == group]
        out[f"AP{group}"] = mean(precision[:, :, members, 0])
    out[f"AR@{max_dets}"] = mean(recall[..., 0])
    return out

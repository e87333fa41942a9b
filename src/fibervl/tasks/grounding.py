"""Fine-grained tasks: phrase grounding, referring expressions and detection through the
fused-backbone grounding detector (``model.detect`` + ``model.detector``).

Training (:class:`FineGrainedTask`): every sample is an (image, text, boxes, positive map)
record. Grounding and referring records carry their own ``tokens_positive``; detection records
become prompts of class names (:class:`DetectionPromptDataset`, with negative class sampling).

Evaluation:

* :func:`evaluate_grounding` — Flickr30k Entities protocol: the phrases of a sentence are the
  distinct token sets of its boxes (several boxes may share one phrase); R@1/5/10 where a phrase
  is found when any of its top-k boxes hits any of its boxes at IoU >= 0.5.
* :func:`evaluate_refexp` — accuracy of the top-1 box for the expression's tokens at IoU >= 0.5.
* :func:`evaluate_detection` — COCO AP via pycocotools over prompts of class names, chunked
  (:func:`prompt_chunks`) when the vocabulary does not fit one prompt (LVIS: 40 names a forward).

Normalisation: the :class:`~fibervl.data.Processor` default (ImageNet mean/std on RGB in [0, 1])
is what models trained here use. Converted official fine-grained checkpoints expect the official
input instead: :class:`OfficialDetectionNormalize` (BGR in 0..255).
"""

from __future__ import annotations

import contextlib
import copy
import random
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data import Collator, ProcessedDataset, Processor, Tokenizer, build_positive_map, detection_prompt
from ..data.errors import DataError
from ..data.prompts import detection_to_grounding
from ..data.samples import Sample
from ..data.collate import SIZE_DIVISIBILITY
from ..data.transforms import InputSize
from ..metrics.detection import ap_by_frequency, average_over_datasets, coco_ap
from ..metrics.grounding import GROUNDING_PROTOCOLS, grounding_recall, rec_accuracy, refexp_split
from ..metrics.lvis import lvis_ap
from ..modeling.detection.losses import GroundingLoss, GroundingTarget, attention_grounding_loss
from ..modeling.fusion import TextToImageAttentionRecorder
from ..modeling.detection.postprocess import GroundingPostProcessor
from ..engine import distributed as D
from ..engine.progress import progress

__all__ = [
    "OfficialDetectionNormalize", "DetectionPromptDataset", "FineGrainedTask", "FineObjectives", "PromptChunk",
    "prompt_chunks", "phrases_of", "rank_phrase_boxes", "evaluate_grounding", "evaluate_refexp", "evaluate_detection",
    "detect_with_prompt", "detection_results", "detector_input", "evaluate_odinw",
]



class OfficialDetectionNormalize:
    """The official fine-grained detector's input: ``[3, H, W]`` RGB in [0, 1] -> BGR in 0..255
    minus mean, over std (maskrcnn-benchmark ``INPUT.PIXEL_MEAN/STD``, ``TO_BGR255``)."""

    mean = torch.tensor([103.530, 116.280, 123.675]).view(3, 1, 1)
    std = torch.tensor([57.375, 57.120, 58.395]).view(3, 1, 1)

    def __call__(self, tensor: Tensor) -> Tensor:
        return (tensor.flip(0) * 255.0 - self.mean) / self.std


def detector_input(config, min_size: int = 0, max_size: int = 0, train_sizes: Sequence[int] = ()) -> InputSize:
    """The input size of ``config``'s detector (:class:`~fibervl.config.DetectionConfig`
    ``min_size`` / ``max_size`` / ``train_min_sizes``, falling back to ``vision.image_size``),
    each overridden by a non-zero / non-empty argument (a recipe's ``data.image_size``,
    ``data.max_size``, ``data.train_sizes``)."""
    det = config.detection
    low = min_size or (det.min_size if det is not None else 0) or config.vision.image_size
    high = max_size or (det.max_size if det is not None else 0) or low
    if high < low:
        raise ValueError(f"the longer side's cap max_size={high} is below the shorter side min_size={low}")
    train = tuple(train_sizes) or (tuple(det.train_min_sizes) if det is not None else ()) or (low,)
    return InputSize(low, high, train)


def make_processor(transforms, normalization: str = "imagenet", skip_bad: bool = False) -> Processor:
    """``normalization``: "imagenet" (models trained here) or "official" (converted checkpoints);
    ``skip_bad``: images that do not decode are skipped (training sets only: evaluation scores every image)."""
    if normalization == "imagenet":
        return Processor(transforms, skip_bad=skip_bad)
    if normalization == "official":
        return Processor(transforms, normalize=OfficialDetectionNormalize(), skip_bad=skip_bad)
    raise ValueError(f"normalization must be 'imagenet' or 'official', got {normalization!r}")


# ---- training data -------------------------------------------------------------------------

class DetectionPromptDataset(Dataset):
    """Detection samples as grounding samples over a prompt of class names, processed.

    Each item's prompt holds every class present in the image plus negative classes drawn at
    random from ``category_ids`` until ``max_classes`` names. Classes are shuffled, so the
    model cannot learn a class from its position. ``max_classes`` 0 = all classes, fixed order.

    With ``tokenizer`` and ``max_length`` (the detector's query length) the prompt also fits
    the text length, as GLIP builds it: the present classes come first, then as many of the
    negatives as still fit whole; a name is never cut, because the collator would drop a box
    whose name lost its tokens, or train it on half a name. An image with more present classes
    than fit keeps those that fit and drops the others' boxes, with a warning (the first
    time). Without them, a prompt longer than ``max_length`` is truncated by the collator.
    """

    def __init__(self, reader: Sequence[Sample], categories: dict[int, str], processor: Processor,
                 category_ids: Sequence[int] | None = None, max_classes: int = 0,
                 tokenizer: Tokenizer | None = None, max_length: int = 0) -> None:
        self.reader, self.categories, self.processor = reader, categories, processor
        self.ids = sorted(categories) if category_ids is None else list(category_ids)
        self.max_classes = max_classes
        self.tokenizer, self.max_length = tokenizer, max_length
        self._warned = False
        self._all_fit: bool | None = None

    def __len__(self) -> int:
        return len(self.reader)

    def _fit_count(self, ids: list[int]) -> int:
        """How many leading classes of ``ids`` a prompt of ``max_length`` tokens holds whole."""
        if self.tokenizer is None or not self.max_length:
            return len(ids)
        return _names_that_fit([self.categories[i] for i in ids], self.tokenizer, self.max_length)

    def _fitting(self, present: list[int], negatives: list[int]) -> list[int]:
        """``present`` then ``negatives``, cut after the last class that fits whole."""
        chosen = present + negatives
        n = self._fit_count(chosen)
        if n < len(present) and not self._warned:
            self._warned = True
            warnings.warn(f"an image has {len(present)} classes but a prompt of {self.max_length} tokens holds "
                          f"{n} of their names: the boxes of the others are left out of its prompt "
                          f"(shown once per data set)", stacklevel=3)
        return chosen[:max(n, 1)]

    def prompt_ids(self, sample: Sample, rng: random.Random) -> list[int]:
        present = sorted({int(c) for c in sample.category_ids.tolist() if int(c) in set(self.ids)})
        others = [i for i in self.ids if i not in set(present)]
        if not self.max_classes:
            if self._all_fit is None:  # the same for every image: tokenise the whole vocabulary once
                self._all_fit = self._fit_count(self.ids) == len(self.ids)
            if self._all_fit:
                return list(self.ids)
            kept = set(self._fitting(present, others))
            return [i for i in self.ids if i in kept]
        n_neg = max(0, self.max_classes - len(present))
        chosen = self._fitting(present, rng.sample(others, min(n_neg, len(others))))
        rng.shuffle(chosen)
        # another order can tokenise a little longer (a name first has no leading space)
        while len(chosen) > 1 and self._fit_count(chosen) < len(chosen):
            negative = [i for i in chosen if i not in set(present)]
            chosen.remove(negative[-1] if negative else chosen[-1])
        return chosen

    def __getitem__(self, i: int):
        sample = self.reader[i]
        # torch's RNG is seeded per DataLoader worker by the engine; draw a seed from it so the
        # sampling is reproducible with the run's seed.
        rng = random.Random(int(torch.randint(0, 2**31 - 1, ())))
        return self.processor(detection_to_grounding(sample, self.categories, self.prompt_ids(sample, rng)))


@dataclass
class FineObjectives:
    """What fine-grained training optimises besides the official detector losses.

    ``token_align``: weight of the contrastive word-region term
    (:func:`~fibervl.modeling.detection.losses.token_region_contrastive_loss`, MDETR's alignment
    loss over anchors). 0, the default, is the official loss. On the shapes set, where most
    phrases name every object of their image, the official loss learns objectness rather than
    which object a word names; weight 4 lifted grounding R@1 from 66 to 76 and REC from 49 to 59
    after the same 400 fine-grained steps (docs/results.md, "Word-region alignment").

    ``attention_align``: weight of a term that asks each grounded word's text-to-image attention,
    in every fused text layer, to fall on the image tokens its boxes overlap
    (:func:`~fibervl.modeling.detection.losses.attention_grounding_loss`). 0, the default, is
    none. Without it a fused word of ``fiber-tiny`` attends to its object hardly more than to any
    other token (docs/results.md, "Why the comparisons fail").
    """

    token_align: float = 0.0
    attention_align: float = 0.0

    def __post_init__(self) -> None:
        for name in ("token_align", "attention_align"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class FineGrainedTask:
    """``training_step``: detector losses (ATSS + token focal + GIoU + centerness, and the
    word-region and attention terms where ``objectives`` asks for them) on a batch of
    :class:`~fibervl.data.collate.FineCollator`; ``loss`` is their sum (the detector's terms are
    normalised per positive anchor, the attention term per grounded word)."""

    objectives: FineObjectives = field(default_factory=FineObjectives)

    def __post_init__(self) -> None:
        align = self.objectives.token_align
        self._loss = GroundingLoss(align_loss_weight=align) if align > 0 else None
        self._recorder: tuple[nn.Module, TextToImageAttentionRecorder] | None = None

    def _attention_recorder(self, model: nn.Module) -> TextToImageAttentionRecorder:
        """The recorder of ``model``'s fused text layers, found once per model rather than by a
        scan of its modules at every step."""
        if self._recorder is None or self._recorder[0] is not model:
            self._recorder = (model, TextToImageAttentionRecorder(model))
        return self._recorder[1]

    def training_step(self, model, batch: dict) -> dict[str, Tensor]:
        weight = self.objectives.attention_align
        recorder = self._attention_recorder(model) if weight > 0 else contextlib.nullcontext()
        with recorder:
            out = model.detect(batch["images"], batch["input_ids"], batch["attention_mask"])
        targets = [GroundingTarget(b, pm) for b, pm in zip(batch["boxes"], batch["positive_maps"])]
        losses = model.detector.loss(out, targets, batch["attention_mask"], loss_fn=self._loss)
        if weight > 0:
            size = tuple(batch["images"].shape[-2:])
            losses["loss_attention"] = weight * attention_grounding_loss(recorder.maps, size, targets)
        return {"loss": sum(losses.values()), **losses}


# ---- prompts for inference -------------------------------------------------------------------

@dataclass
class PromptChunk:
    """One detection prompt: ``category_ids [K]``, its ``text``, ``input_ids`` / ``attention_mask``
    ``[1, T]`` and ``positive_map [K, T]`` (class -> its name's tokens)."""

    category_ids: list[int]
    text: str
    input_ids: Tensor
    attention_mask: Tensor
    positive_map: Tensor


def _names_that_fit(names: list[str], tokenizer: Tokenizer, max_length: int) -> int:
    """How many leading ``names`` a prompt of ``max_length`` tokens holds whole."""
    text, spans = detection_prompt(names)
    _, offsets = tokenizer.encode(text)
    real = offsets[1:-1][:max_length - 2]  # what truncation keeps, <s> and </s> aside
    last_end = max((e for _, e in real), default=0)
    return sum(1 for _, end in spans if end <= last_end)


def prompt_chunks(categories: dict[int, str], category_ids: Sequence[int], tokenizer: Tokenizer,
                  max_length: int, chunk_size: int = 40) -> list[PromptChunk]:
    """Prompts naming every class of ``category_ids`` in order: at most ``chunk_size`` names
    each (the LVIS protocol: 40) and never more than ``max_length`` tokens.

    No class is left out: where ``chunk_size`` names would not fit ``max_length`` tokens, the
    prompt is closed after the last name that fits whole and the next one starts there. A single
    name longer than a whole prompt keeps the tokens that fit, with a warning naming it (the one
    case where a prompt is truncated); a name of which no token fits is an error.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    ids = list(category_ids)
    chunks, start = [], 0
    while start < len(ids):
        part = ids[start:start + chunk_size]
        n = _names_that_fit([categories[i] for i in part], tokenizer, max_length)
        if n == 0:
            n = 1
            warnings.warn(f"the class name {categories[part[0]]!r} is longer than {max_length} tokens and is truncated",
                          stacklevel=2)
        part = part[:n]
        start += n
        text, spans = detection_prompt([categories[i] for i in part])
        tok = tokenizer([text], max_length=max_length)
        pm = build_positive_map(tok.offsets[0], [[s] for s in spans], tok.input_ids.shape[1])
        lost = [categories[i] for i, row in zip(part, pm) if row.sum() == 0]
        if lost:
            raise ValueError(f"no token of the class name {lost[0]!r} fits a prompt of {max_length} tokens")
        chunks.append(PromptChunk(part, text, tok.input_ids, tok.attention_mask, pm))
    return chunks


def phrases_of(positive_map: Tensor, boxes: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Group boxes by phrase: ``positive_map [N, T]`` -> ``(phrase_maps [P, T], boxes per phrase)``,
    a phrase being a distinct row (boxes naming the same tokens belong to one phrase)."""
    if positive_map.shape[0] == 0:
        return positive_map, []
    rows, inverse = torch.unique(positive_map, dim=0, return_inverse=True)
    return rows, [boxes[inverse == p] for p in range(rows.shape[0])]


def _padded(size: Sequence[int]) -> tuple[int, int]:
    return tuple(-(-int(v) // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY for v in size)


def size_groups(image_sizes: Sequence[Sequence[int]]) -> list[list[int]]:
    """Indices of a batch grouped by the size each image pads to alone (a multiple of 32), in
    order of first appearance. The detector runs each group on its own, cropped to that size:
    an image then meets the same padding in any batch, so results do not depend on the batch
    (nor on the number of evaluation processes)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(image_sizes):
        groups.setdefault(_padded(size), []).append(i)
    return list(groups.values())


def _detect_group(model, images: Tensor, image_sizes, group: list[int], input_ids: Tensor, attention_mask: Tensor):
    h, w = _padded(image_sizes[group[0]])
    index = torch.tensor(group, device=images.device)
    return model.detect(images[index, :, :h, :w], input_ids[index.to(input_ids.device)],
                        attention_mask[index.to(attention_mask.device)])


def _image_slice(out, b: int):
    h = out.head
    return ([r[b:b + 1] for r in h.bbox_reg], [c[b:b + 1] for c in h.centerness],
            [d[b:b + 1] for d in h.dot_product_logits], out.anchors)


@torch.no_grad()
def rank_phrase_boxes(model, batch: dict, phrase_maps: Sequence[Tensor],
                      top_k: int = 10) -> list[list[tuple[Tensor, Tensor]]]:
    """For each image ``b`` and each row of ``phrase_maps[b] [P_b, T]``: ``(boxes [<=top_k, 4],
    scores [<=top_k])`` best first (score ``sqrt(mean token probability x centerness)``, NMS per
    phrase). Every anchor is a candidate (no score threshold), so each phrase gets boxes."""
    sizes = [tuple(int(v) for v in s) for s in batch["image_sizes"]]
    # no per-image cut (0): it would rank all phrases together; each phrase keeps its top_k below
    post = GroundingPostProcessor(pre_nms_thresh=0.0, detections_per_img=0)
    result: list = [[] for _ in phrase_maps]
    for group in size_groups(sizes):
        if all(phrase_maps[b].shape[0] == 0 for b in group):
            continue
        out = _detect_group(model, batch["images"], sizes, group, batch["input_ids"], batch["attention_mask"])
        for k, b in enumerate(group):
            pm = phrase_maps[b]
            if pm.shape[0] == 0:
                continue
            det = post(*_image_slice(out, k), [sizes[b]], pm.to(batch["images"].device), torch.arange(pm.shape[0]))[0]
            result[b] = [(det.boxes[det.labels == p][:top_k].cpu(), det.scores[det.labels == p][:top_k].cpu())
                         for p in range(pm.shape[0])]
    return result


def _eval_samples(reader, image_size, limit: int) -> list[Sample]:
    """The first ``limit`` records of ``reader`` (0: all) in the order evaluation runs them:
    images that pad to one size together (:func:`size_groups` runs them together)."""
    size = InputSize.of(image_size)
    samples = list(reader)[:limit] if limit else list(reader)
    samples.sort(key=lambda s: _padded(size.input_size(s.width, s.height)) if s.width and s.height else (0, 0))
    return samples


def _eval_share(samples: list[Sample], batch_size: int, what: str) -> list[Sample]:
    """This process's share of ``samples``: whole batches of the one process
    (:func:`~fibervl.engine.distributed.rank_share`; all of them in one process), said on stderr
    under torchrun."""
    share = D.rank_share(samples, batch_size)
    if D.is_distributed():
        print(f"{what} evaluation: rank {D.get_rank()} of {D.get_world_size()} runs {len(share)} of "
              f"{len(samples)} records", file=sys.stderr)
    return share


def _eval_loader(samples, tokenizer, image_size, max_len, batch_size, normalization):
    """Batches of ``samples`` (in their order) processed for evaluation."""
    size = InputSize.of(image_size)
    data = ProcessedDataset(samples, make_processor(size.eval_transforms(), normalization))
    collate = Collator(tokenizer, max_length=max_len, size_divisibility=SIZE_DIVISIBILITY)
    return torch.utils.data.DataLoader(data, batch_size=batch_size, collate_fn=collate)


def _device_batch(batch, device) -> dict:
    return {"images": batch.pixel_values.to(device), "input_ids": batch.input_ids.to(device),
            "attention_mask": batch.attention_mask.to(device), "image_sizes": batch.image_sizes}


@torch.no_grad()
def evaluate_grounding(model, tokenizer: Tokenizer, reader, image_size: int | InputSize, max_len: int, limit: int = 0,
                       batch_size: int = 16, normalization: str = "imagenet",
                       protocol: str | None = None) -> dict[str, float]:
    """Phrase grounding R@1/5/10 (percent) on ``reader`` (MDETR format), first ``limit`` records.

    ``image_size``: the detector's input (:class:`~fibervl.data.transforms.InputSize`; an int
    ``n``: fit into ``n`` x ``n``, aspect kept). ``protocol`` (Flickr30k Entities,
    :mod:`fibervl.metrics.grounding`): "any" (a phrase is found when a box hits any of its
    ground-truth boxes: ``r1``..), "merged" (the union box of its ground-truth boxes:
    ``merged_r1``..) or "both"; None: "both" on a Flickr30k file (by its name), else "any".
    Predictions and ground truth are compared in the network's input frame, a scaling of the
    original image's which leaves every IoU as it is."""
    if protocol is None:
        protocol = "both" if "flickr" in Path(str(getattr(reader, "file", ""))).name.lower() else "any"
    if protocol not in GROUNDING_PROTOCOLS:
        raise ValueError(f"grounding protocol must be one of {GROUNDING_PROTOCOLS}, got {protocol!r}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    samples = _eval_samples(reader, image_size, limit)
    if samples and not any(s.num_boxes for s in samples):  # recall over no phrase would print 0.00
        raise DataError(getattr(reader, "file", None), f"none of its {len(samples)} records has a box: phrase "
                        "grounding is scored against the annotated boxes of each phrase, and this file has none "
                        "(a file of phrases to query, without ground truth, cannot be scored)")
    per_record = []  # (ground-truth boxes of each phrase, ranked boxes of each phrase)
    share = _eval_share(samples, batch_size, "Grounding")
    for batch in progress(_eval_loader(share, tokenizer, image_size, max_len, batch_size, normalization), "grounding"):
        grouped = [phrases_of(pm, bx) for pm, bx in zip(batch.positive_maps, batch.boxes)]
        ranked = rank_phrase_boxes(model, _device_batch(batch, device), [g[0] for g in grouped], top_k=10)
        per_record += [(boxes, [b for b, _ in r]) for (_, boxes), r in zip(grouped, ranked)]
    model.train(was_training)
    preds, gts = [], []
    for boxes, ranked_boxes in D.gather_shares(per_record, len(samples), batch_size):
        gts.extend(boxes)
        preds.extend(ranked_boxes)
    out: dict[str, float] = {}
    if protocol in ("any", "both"):
        out.update(grounding_recall(preds, gts))
    if protocol in ("merged", "both"):
        out.update({k if k == "phrases" else f"merged_{k}": v
                    for k, v in grounding_recall(preds, gts, merge_boxes=True).items()})
    return out


@torch.no_grad()
def evaluate_refexp(model, tokenizer: Tokenizer, reader, image_size: int | InputSize, max_len: int, limit: int = 0,
                    batch_size: int = 16, normalization: str = "imagenet",
                    group_of: Callable[[Sample], str] | None = None, split: str | None = None) -> dict[str, float]:
    """REC accuracy@0.5 (percent): the top-1 box for the tokens of each record's target box.
    ``group_of(sample)`` names each record's group (e.g. expressions that name a class held out
    of training); the result then also has ``acc_<group>`` and ``expressions_<group>``.
    ``split`` (e.g. "refcoco_testA") names the split: the accuracy is also reported as
    ``acc_<split>``; None: the RefCOCO / + / g split of the reader's MDETR file name, if it is one
    (:func:`~fibervl.metrics.grounding.refexp_split`)."""
    if split is None:
        split = refexp_split(getattr(reader, "file", "") or "")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    samples = _eval_samples(reader, image_size, limit)
    per_record = []  # (target box, top-1 box, group), or None for a record without its box
    share = _eval_share(samples, batch_size, "Referring expression")
    for batch in progress(_eval_loader(share, tokenizer, image_size, max_len, batch_size, normalization),
                          "referring expressions"):
        maps = [pm[:1] for pm in batch.positive_maps]  # the referred object is the record's (first) box
        ranked = rank_phrase_boxes(model, _device_batch(batch, device), maps, top_k=1)
        for sample, boxes, r in zip(batch.samples, batch.boxes, ranked):
            if boxes.shape[0] == 0:
                per_record.append(None)  # the expression's words were truncated away (counted by the collator)
                continue
            best = r[0][0]
            per_record.append((boxes[0], best[0] if best.shape[0] else torch.zeros(4),
                               group_of(sample) if group_of else ""))
    model.train(was_training)
    kept = [r for r in D.gather_shares(per_record, len(samples), batch_size) if r is not None]
    targets, top1, groups = [r[0] for r in kept], [r[1] for r in kept], [r[2] for r in kept]
    if not targets:
        result = rec_accuracy(torch.zeros(0, 4), torch.zeros(0, 4))
    else:
        top1, targets = torch.stack(top1), torch.stack(targets)
        result = rec_accuracy(top1, targets)
        if group_of:
            for group in sorted(set(groups)):
                members = torch.tensor([g == group for g in groups])
                part = rec_accuracy(top1[members], targets[members])
                result[f"acc_{group}"], result[f"expressions_{group}"] = part["acc"], part["expressions"]
    if split:
        result[f"acc_{split}"] = result["acc"]
    return result


@torch.no_grad()
def detect_with_prompt(model, images: Tensor, image_sizes: Sequence[tuple[int, int]], chunks: Sequence[PromptChunk],
                       postprocessor: GroundingPostProcessor | None = None):
    """Run every prompt chunk over ``images [B, 3, H, W]`` (by :func:`size_groups`); per image the
    detections of all chunks (``boxes [N, 4]`` xyxy in the network input frame, ``scores [N]``,
    ``labels [N]`` = category ids), best first."""
    device = images.device
    post = postprocessor or model.detector.postprocessor
    sizes = [tuple(int(v) for v in s) for s in image_sizes]
    per_image = [[] for _ in range(images.shape[0])]
    for chunk in chunks:
        ids = chunk.input_ids.to(device).expand(images.shape[0], -1)
        mask = chunk.attention_mask.to(device).expand(images.shape[0], -1)
        for group in size_groups(sizes):
            out = _detect_group(model, images, sizes, group, ids, mask)
            dets = post(
                out.head.bbox_reg, out.head.centerness, out.head.dot_product_logits, out.anchors,
                [sizes[b] for b in group], chunk.positive_map.to(device), torch.tensor(chunk.category_ids))
            for b, d in zip(group, dets):
                per_image[b].append(d)
    merged = []
    for dets in per_image:
        if not dets:  # no prompt: nothing to detect
            merged.append((torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)))
            continue
        boxes = torch.cat([d.boxes for d in dets]).cpu()
        scores = torch.cat([d.scores for d in dets]).cpu()
        labels = torch.cat([d.labels for d in dets]).cpu()
        order = scores.argsort(descending=True)
        merged.append((boxes[order], scores[order], labels[order]))
    return merged


# COCO's budget is the post-processor's 100 per image; LVIS scores at most 300 per image.
LVIS_MAX_DETECTIONS = 300


@torch.no_grad()
def detection_results(model, tokenizer: Tokenizer, reader, category_ids: Sequence[int], image_size: int | InputSize,
                      max_len: int, limit: int = 0, batch_size: int = 16, chunk_size: int = 40,
                      normalization: str = "imagenet", max_detections: int = 100) -> tuple[list[dict], list]:
    """Detections of ``category_ids`` on ``reader``'s images (its first ``limit``) in the official
    results format: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` in the pixels
    of the annotation's image; and the ids of the images run.

    The prompt names only ``category_ids``, in chunks (:func:`prompt_chunks`). Each image keeps
    its ``max_detections`` best over all chunks (each chunk may give that many); a federated
    (LVIS) reader's images at most that many, also where scores tie at the post-processor's cut."""
    federated = bool(getattr(reader, "federated", False))
    if not category_ids:
        raise ValueError("detection needs at least one category id to name in the prompt")
    categories = reader.categories
    missing = [i for i in category_ids if i not in categories]
    if missing:
        raise ValueError(f"category ids {missing} are not in {reader.file}")
    sizes = {s.image_id: (s.height, s.width) for s in reader}
    chunks = prompt_chunks(categories, category_ids, tokenizer, max_len, chunk_size)
    post = model.detector.postprocessor if hasattr(model, "detector") else None
    if post is not None and max_detections > post.detections_per_img > 0:
        post = copy.copy(post)
        post.detections_per_img = max_detections
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    samples = _eval_samples(reader, image_size, limit)
    per_image = []  # (image id, boxes [N, 4] xyxy in the original pixels, scores [N], labels [N])
    share = _eval_share(samples, batch_size, "Detection")
    for batch in progress(_eval_loader(share, tokenizer, image_size, max_len, batch_size, normalization), "detection"):
        in_sizes = [tuple(int(v) for v in s) for s in batch.image_sizes]
        dets = detect_with_prompt(model, batch.pixel_values.to(device), in_sizes, chunks, post)
        for sample, (h_in, w_in), (boxes, scores, labels) in zip(batch.samples, in_sizes, dets):
            # several chunks give the budget each; and LVIS allows 300 an image, where the
            # post-processor keeps ties at its cut (the official kthvalue rule). One COCO prompt
            # keeps that rule: pycocotools limits detections per image and category, not per image.
            if max_detections > 0 and (len(chunks) > 1 or federated):
                boxes, scores, labels = boxes[:max_detections], scores[:max_detections], labels[:max_detections]
            h0, w0 = sizes[sample.image_id]
            per_image.append((sample.image_id, boxes * torch.tensor([w0 / w_in, h0 / h_in, w0 / w_in, h0 / h_in]),
                              scores, labels))
    model.train(was_training)
    results, image_ids = [], []
    for image_id, boxes, scores, labels in D.gather_shares(per_image, len(samples), batch_size):
        image_ids.append(image_id)
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            results.append({"image_id": image_id, "category_id": int(label), "score": float(score),
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    return results, image_ids


def evaluate_detection(model, tokenizer: Tokenizer, reader, category_ids: Sequence[int], image_size: int | InputSize,
                       max_len: int, limit: int = 0, batch_size: int = 16, chunk_size: int = 40,
                       normalization: str = "imagenet", max_detections: int = 0,
                       results: list | None = None, prompt_ids: Sequence[int] | None = None) -> dict[str, float]:
    """Detection AP (percent) of ``category_ids`` on a detection reader's images
    (:func:`detection_results`), scored against what the reader accepted
    (``reader.ground_truth()``: boxes it skipped as bad are not counted as missed).
    ``prompt_ids``: the classes the prompts name, a superset of ``category_ids`` (default: those
    alone); the others compete for the boxes and are not scored (zero-shot AP with every class
    named).

    A federated reader (LVIS, ``reader.federated``) is scored by the LVIS rules
    (:func:`~fibervl.metrics.lvis.lvis_ap`: AP, APr / APc / APf, 300 detections per image);
    any other by COCO's through pycocotools (and APr / APc / APf when its categories carry a
    ``frequency``, see :func:`~fibervl.metrics.detection.ap_by_frequency`). ``max_detections``
    0: 300 for LVIS, 100 otherwise. ``results``: a list the detections are appended to (to
    write the official results file)."""
    federated = bool(getattr(reader, "federated", False))
    budget = max_detections or (LVIS_MAX_DETECTIONS if federated else 100)
    named = list(prompt_ids) if prompt_ids is not None else list(category_ids)
    if not set(category_ids) <= set(named):
        raise ValueError(f"classes {sorted(set(category_ids) - set(named))} are scored but not named in the prompts")
    found, image_ids = detection_results(model, tokenizer, reader, named, image_size, max_len, limit, batch_size,
                                         chunk_size, normalization, budget)
    if results is not None:
        results.extend(found)
    metrics = D.computed_once(_detection_ap, reader, found, category_ids, image_ids)  # rank 0 scores, all get it
    metrics["images"] = len(image_ids)
    return metrics


def _detection_ap(reader, found: list[dict], category_ids: Sequence[int], image_ids: list) -> dict[str, float]:
    """The AP of detections ``found`` on ``image_ids`` by the rules of ``reader`` (see :func:`evaluate_detection`)."""
    gt = reader.ground_truth()
    if getattr(reader, "federated", False):
        return lvis_ap(gt, found, category_ids, image_ids)
    metrics = coco_ap(gt, found, category_ids, image_ids)
    metrics.update(ap_by_frequency(gt, found, category_ids, image_ids))
    return metrics


def evaluate_odinw(model, tokenizer: Tokenizer, readers: Mapping[str, object], image_size: int | InputSize,
                   max_len: int, **kwargs) -> dict[str, float]:
    """ODinW: the AP of each data set (``readers``: name -> its evaluation split, an
    :class:`~fibervl.data.readers.odinw.OdinwReader`), every class of each in its prompts, and
    their average: ``{"AP": mean, "AP_<name>": .., "datasets": N}``. ``kwargs`` go to
    :func:`evaluate_detection`."""
    per = {name: evaluate_detection(model, tokenizer, reader, sorted(reader.categories), image_size, max_len, **kwargs)
           for name, reader in readers.items()}
    return average_over_datasets(per)

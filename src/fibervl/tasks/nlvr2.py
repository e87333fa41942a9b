"""NLVR2: is a statement true of a pair of images? Two fused passes (left image + text, right
image + text) whose cls features [B, 2H] each are concatenated into ``model.nlvr2_logits``
([B, 2], class 1 = True); cross-entropy loss; accuracy. No horizontal flip (the statements say
"left" and "right")."""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from ..data import Collator, ProcessedDataset, Processor, Tokenizer
from ..data.transforms import eval_transforms
from ..engine import distributed as D
from ..engine.precision import eval_autocast
from ..engine.progress import progress


def nlvr2_logits(model, images: torch.Tensor | None, images2: torch.Tensor | None, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor, image_prefix: torch.Tensor | None = None,
                 image2_prefix: torch.Tensor | None = None) -> torch.Tensor:
    """[B, 3, S, S] x 2 (or their image prefixes [B, Hs, Ws, Cs] x 2), [B, L] -> [B, 2]. Both
    passes run as one batch of 2B (same weights); the statement's unfused prefix is computed once
    for its two images."""
    b = input_ids.shape[0]
    text_prefix = model.text_prefix(input_ids, attention_mask)
    if image_prefix is not None:
        pixels, prefixes = None, torch.cat([image_prefix, image2_prefix])
    else:
        pixels, prefixes = torch.cat([images, images2]), None
    cls = model.fuse(pixels, None, attention_mask.repeat(2, 1), image_prefix=prefixes,
                     text_prefix=text_prefix.repeat(2, 1, 1)).cls_feats
    return model.nlvr2_logits(cls[:b], cls[b:])


class Nlvr2Task(nn.Module):
    def training_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        logits = nlvr2_logits(model, batch.get("images"), batch.get("images2"), batch["input_ids"],
                              batch["attention_mask"], batch.get("image_prefix"), batch.get("image2_prefix"))
        loss = F.cross_entropy(logits.float(), batch["labels"])
        acc = (logits.argmax(1) == batch["labels"]).float().mean().detach()
        return {"loss": loss, "acc": acc}


@torch.no_grad()
def predict_nlvr2(model, tokenizer: Tokenizer, samples, image_size: int, max_length: int, batch_size: int = 32,
                  bf16: bool = False) -> tuple[list[str], torch.Tensor]:
    """(sample ids, [N, 2] softmax probabilities) for NLVR2 samples (labels not needed), in the
    order given. Under torchrun each process scores its share of the samples
    (:func:`~fibervl.engine.distributed.rank_share`) and every process returns them all
    (collective: call it on every rank)."""
    samples = list(samples)
    share = D.rank_share(samples)
    if D.is_distributed():
        print(f"NLVR2 evaluation: rank {D.get_rank()} of {D.get_world_size()} scores {len(share)} of "
              f"{len(samples)} items", file=sys.stderr)
    loader = DataLoader(ProcessedDataset(share, Processor(eval_transforms(image_size))), batch_size=batch_size,
                        collate_fn=Collator(tokenizer, max_length=max_length))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ids, probs = [], []
    try:
        for b in progress(loader, "NLVR2"):
            with eval_autocast(device, bf16):
                logits = nlvr2_logits(model, b.pixel_values.to(device), b.pixel_values2.to(device),
                                      b.input_ids.to(device), b.attention_mask.to(device)).float()
            ids += [s.sample_id for s in b.samples]
            probs.append(logits.softmax(-1).cpu())
    finally:
        model.train(was_training)
    scored = D.gather_dicts(dict(zip(ids, torch.cat(probs) if probs else torch.zeros(0, 2))))
    ids = [s.sample_id for s in samples]
    return ids, torch.stack([scored[i] for i in ids]) if ids else torch.zeros(0, 2)


def evaluate_nlvr2(model, tokenizer: Tokenizer, samples, image_size: int, max_length: int,
                   bf16: bool = False) -> dict[str, float]:
    """Accuracy in percent (and the count) over labelled NLVR2 samples."""
    samples = list(samples)
    _, probs = predict_nlvr2(model, tokenizer, samples, image_size, max_length, bf16=bf16)
    labels = torch.tensor([int(bool(s.label)) for s in samples])
    return {"nlvr2_acc": 100.0 * (probs.argmax(1) == labels).float().mean().item(), "items": len(samples)}

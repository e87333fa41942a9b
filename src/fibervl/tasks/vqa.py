"""VQA as multi-label classification over an answer vocabulary (ViLT / FIBER's VQAv2 recipe).

Targets are VQAv2 soft scores (:meth:`fibervl.data.AnswerVocabulary.targets`: 0.3 / 0.6 / 0.9 / 1
for 1 / 2 / 3 / 4+ of 10 annotators); the loss is the official one,
``binary_cross_entropy_with_logits(logits, targets) * num_answers`` (the mean over B x N entries
times N: a sum over answers, averaged over questions). Prediction: the arg-max answer.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from ..data import AnswerVocabulary, Collator, ProcessedDataset, Processor, Tokenizer
from ..data.transforms import eval_transforms
from ..engine import distributed as D
from ..metrics.vqa import vqa_score
from ..engine.precision import eval_autocast
from ..engine.progress import progress


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B, N] logits and soft targets -> the official VQA loss (BCE-with-logits mean times N)."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets) * targets.shape[1]


class VqaTask(nn.Module):
    """Engine task: fused pass -> ``model.vqa_logits`` -> :func:`vqa_loss`. Logs the batch's
    VQA score (soft target of the arg-max) and ``oov``: the fraction of questions none of whose
    answers is in the vocabulary."""

    def training_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        cls = model.fuse(batch.get("images"), batch["input_ids"], batch["attention_mask"],
                         image_prefix=batch.get("image_prefix")).cls_feats
        logits = model.vqa_logits(cls)
        targets = batch["targets"]
        loss = vqa_loss(logits, targets)
        score = targets.gather(1, logits.argmax(1, keepdim=True)).mean().detach()
        return {"loss": loss, "vqa_score": score, "oov": 1.0 - batch["in_vocab"].float().mean()}


def vocabulary_coverage(samples, vocab: AnswerVocabulary) -> dict[str, float]:
    """How much of a split the vocabulary covers: questions, questions with no annotator answer
    in it (they can never be answered right), and the share of annotator answers outside it."""
    questions = no_answer = answers = outside = 0
    for s in samples:
        questions += 1
        inside = [a in vocab for a in s.answers]
        answers += len(inside)
        outside += inside.count(False)
        no_answer += not any(inside)
    return {"questions": questions, "questions_without_vocab_answer": no_answer,
            "answers_outside_vocab_pct": 100.0 * outside / max(1, answers)}


@torch.no_grad()
def vqa_topk(model, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             k: int = 5, bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, 3, S, S] images, [B, L] tokens -> (sigmoid scores [B, k], answer indices [B, k])."""
    device = next(model.parameters()).device
    with eval_autocast(device, bf16):
        cls = model.fuse(pixel_values.to(device), input_ids.to(device), attention_mask.to(device)).cls_feats
        logits = model.vqa_logits(cls).float()
    return torch.sigmoid(logits).topk(min(k, logits.shape[1]), dim=1)


@torch.no_grad()
def predict_answers(model, tokenizer: Tokenizer, vocab: AnswerVocabulary, samples, image_size: int,
                    max_length: int, batch_size: int = 64, bf16: bool = False) -> dict[str, str]:
    """question id (``Sample.sample_id``) -> predicted answer for every sample. Under torchrun
    each process answers its share of the questions (:func:`~fibervl.engine.distributed.rank_share`)
    and every process returns them all (collective: call it on every rank)."""
    if model.config.vqa_num_answers != len(vocab):
        raise ValueError(f"the model's VQA head has {model.config.vqa_num_answers} answers, the vocabulary {len(vocab)}")
    share = D.rank_share(samples)
    if D.is_distributed():
        print(f"VQA evaluation: rank {D.get_rank()} of {D.get_world_size()} answers {len(share)} of "
              f"{len(samples)} questions", file=sys.stderr)
    # Answers are not needed to predict: strip them so test splits (no annotations) work too.
    data = ProcessedDataset([replace(s, answers=[]) for s in share], Processor(eval_transforms(image_size)))
    loader = DataLoader(data, batch_size=batch_size, collate_fn=Collator(tokenizer, max_length=max_length))
    was_training = model.training
    model.eval()
    out: dict[str, str] = {}
    try:
        for batch in progress(loader, "VQA"):
            _, idx = vqa_topk(model, batch.pixel_values, batch.input_ids, batch.attention_mask, k=1, bf16=bf16)
            for s, a in zip(batch.samples, vocab.decode(idx[:, 0])):
                out[s.sample_id] = a
    finally:
        model.train(was_training)
    return D.gather_dicts(out)


def evaluate_vqa(model, tokenizer: Tokenizer, vocab: AnswerVocabulary, samples, image_size: int, max_length: int,
                 bf16: bool = False) -> tuple[dict[str, float], dict[str, str]]:
    """(VQAv2 accuracy overall and per answer type in percent, the predictions) on ``samples``."""
    samples = list(samples)
    predictions = predict_answers(model, tokenizer, vocab, samples, image_size, max_length, bf16=bf16)
    return vqa_score(predictions, samples), predictions

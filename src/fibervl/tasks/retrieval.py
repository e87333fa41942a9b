"""Image-text retrieval with the dual encoder (ITC): O(n + m) encoder passes for n images, m texts."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..data import Processor, Sample, Tokenizer
from ..data.transforms import eval_transforms
from ..metrics.retrieval import chance_recall, retrieval_recall


def precision_context(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def _stack_images(items):
    return torch.stack([item.pixel_values for item in items])


@torch.no_grad()
def embed_images(model, paths: list[Path], image_size: int, batch_size: int = 64, num_workers: int = 0,
                 bf16: bool = False) -> torch.Tensor:
    """[I, H] L2-normalised ITC image embeddings of the images at ``paths``."""
    processor = Processor(eval_transforms(image_size))
    samples = [Sample(sample_id=str(p), image_id=i, image_path=Path(p)) for i, p in enumerate(paths)]
    loader = DataLoader(samples, batch_size=batch_size, num_workers=num_workers,
                        collate_fn=lambda batch: _stack_images([processor(s) for s in batch]))
    device = next(model.parameters()).device
    out = []
    for images in loader:
        with precision_context(device, bf16):
            out.append(model.encode_image(images.to(device)).float())
    return torch.cat(out)


@torch.no_grad()
def embed_texts(model, tokenizer: Tokenizer, texts: list[str], max_length: int, batch_size: int = 256,
                bf16: bool = False) -> torch.Tensor:
    """[T, H] L2-normalised ITC text embeddings."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[start:start + batch_size], max_length=max_length, padding="longest")
        with precision_context(device, bf16):
            out.append(model.encode_text(tokens.input_ids.to(device), tokens.attention_mask.to(device)).float())
    return torch.cat(out)


@torch.no_grad()
def evaluate_itc_retrieval(model, tokenizer: Tokenizer, reader, image_size: int, max_length: int,
                           limit: int = 0, bf16: bool = False) -> dict[str, float]:
    """R@1/5/10 both ways over a captions split (e.g. :class:`~fibervl.data.KarpathyCaptions`),
    with the chance level. ``limit``: only the first ``limit`` images (0 = all)."""
    paths, texts, text_to_image, image_to_texts = reader.retrieval_lists()
    if limit:
        paths, image_to_texts = paths[:limit], image_to_texts[:limit]
        keep = [t for ts in image_to_texts for t in ts]
        texts = [texts[t] for t in keep]
        text_to_image = [text_to_image[t] for t in keep]
    was_training = model.training
    model.eval()
    try:
        image_embed = embed_images(model, paths, image_size, bf16=bf16)
        text_embed = embed_texts(model, tokenizer, texts, max_length, bf16=bf16)
    finally:
        model.train(was_training)
    scores = image_embed @ text_embed.t()
    metrics = retrieval_recall(scores, torch.tensor(text_to_image))
    chance = chance_recall(len(paths), len(texts), len(texts) / max(1, len(paths)))
    metrics.update({f"chance_{k}": v for k, v in chance.items()})
    metrics.update(images=len(paths), texts=len(texts))
    return metrics

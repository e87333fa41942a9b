"""Image-text retrieval recall, with several captions per image."""

from __future__ import annotations

import torch


def retrieval_recall(scores: torch.Tensor, text_to_image: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways, in percent.

    scores: [I, T] similarity of every image with every text; text_to_image: [T] the image of
    each text. Image-to-text: an image counts as hit at k if any of its captions is among its k
    best texts. Text-to-image: a text counts if its image is among its k best images.
    Returns ``{"i2t_r1", ..., "t2i_r10", "rsum"}``.
    """
    # Counting ranks is cheap: on the CPU, wherever the scores were computed.
    scores, text_to_image = scores.detach().float().cpu(), text_to_image.cpu()
    n_images, n_texts = scores.shape
    if text_to_image.shape != (n_texts,):
        raise ValueError(f"text_to_image must have {n_texts} entries, got {tuple(text_to_image.shape)}")
    out: dict[str, float] = {}
    # Rank of the best positive for each image: texts scoring above it.
    positive = text_to_image[None, :] == torch.arange(n_images)[:, None]  # [I, T]
    best_pos = scores.masked_fill(~positive, float("-inf")).max(dim=1).values
    i2t_rank = (scores > best_pos[:, None]).sum(dim=1)
    # Rank of each text's image among all images.
    own = scores[text_to_image, torch.arange(n_texts)]
    t2i_rank = (scores > own[None, :]).sum(dim=0)
    for k in ks:
        out[f"i2t_r{k}"] = 100.0 * (i2t_rank < k).float().mean().item()
    for k in ks:
        out[f"t2i_r{k}"] = 100.0 * (t2i_rank < k).float().mean().item()
    out["rsum"] = sum(out.values())
    return out

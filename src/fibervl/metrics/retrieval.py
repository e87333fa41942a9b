"""Image-text retrieval recall, with several captions per image."""

from __future__ import annotations

import torch


def retrieval_recall(scores: torch.Tensor, text_to_image: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways, in percent.

    scores: [I, T] similarity of every image with every text; text_to_image: [T] the image of
    each text. Image-to-text: an image counts as hit at k if any of its captions is among its k
    best texts. Text-to-image: a text counts if its image is among its k best images.

    Ties are broken at random, in expectation: a query whose best positive scores exactly as
    ``t`` other candidates, with ``g`` candidates above them, is a hit at k with probability
    ``clamp((k - g) / (t + 1), 0, 1)``. Counting ties as hits would give a collapsed model (every
    score equal) a recall of 100; counting them as misses would punish scores rounded alike
    (bf16 embeddings). A caption that is the same string as another image's caption ties with it
    and so counts half, as in the field's protocols, where the tie falls to whichever sorts first.
    Returns ``{"i2t_r1", ..., "t2i_r10", "rsum"}``.
    """
    # Counting ranks is cheap: on the CPU, wherever the scores were computed.
    scores, text_to_image = scores.detach().float().cpu(), text_to_image.cpu()
    n_images, n_texts = scores.shape
    if text_to_image.shape != (n_texts,):
        raise ValueError(f"text_to_image must have {n_texts} entries, got {tuple(text_to_image.shape)}")
    out: dict[str, float] = {}
    rivals = text_to_image[None, :] != torch.arange(n_images)[:, None]  # [I, T]: not the text's image
    # Image -> text: the best positive of each image against the other texts.
    best_pos = scores.masked_fill(rivals, float("-inf")).max(dim=1).values[:, None]
    i2t = _hit_probability(scores, best_pos, rivals, dim=1, ks=ks)
    # Text -> image: each text's own image against the other images.
    own = scores[text_to_image, torch.arange(n_texts)][None, :]
    t2i = _hit_probability(scores, own, rivals, dim=0, ks=ks)
    for k in ks:
        out[f"i2t_r{k}"] = 100.0 * i2t[k].mean().item()
    for k in ks:
        out[f"t2i_r{k}"] = 100.0 * t2i[k].mean().item()
    out["rsum"] = sum(out.values())
    return out


def _hit_probability(scores: torch.Tensor, target: torch.Tensor, rivals: torch.Tensor, dim: int,
                     ks: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """Per query (rows for ``dim=1``, columns for ``dim=0``): the probability that ``target``
    ranks in the top k among itself and its ``rivals`` when ties are broken at random."""
    above = ((scores > target) & rivals).sum(dim=dim).float()
    tied = ((scores == target) & rivals).sum(dim=dim).float()
    return {k: ((k - above) / (tied + 1)).clamp(0, 1) for k in ks}

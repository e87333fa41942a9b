"""Unfused prefixes of a whole retrieval gallery, computed once and kept compactly.

Re-ranking (and scoring every pair) runs the fused top blocks on (image, text) pairs above each
side's unfused prefix (:meth:`FiberModel.image_prefix` / ``text_prefix``). Holding the gallery's
pixels to compute them would cost ``I x 3 x S x S x 4`` bytes (COCO's 5k test images at 576 px:
19.9 GB) and the fp32 prefixes about as much again. Here the images are read a batch at a time and
only their prefixes are kept: in the dtype asked for (bf16 halves them) and, with a directory, in a
memory-mapped file rather than in RAM, so that the operating system pages rows in as pairs need
them. :func:`bytes_per_image` says what a model's prefix costs per image before anything runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..data import Processor, Sample, Tokenizer
from ..data.transforms import eval_transforms
from ..engine.precision import eval_autocast
from ..engine.progress import progress


def row_storage(rows: int, shape: tuple[int, ...], dtype: torch.dtype, directory: str | Path | None = None,
                name: str = "rows") -> torch.Tensor:
    """An uninitialised ``[rows, *shape]`` tensor: in memory, or backed by ``directory/name.bin``
    (created or overwritten), memory-mapped so that written rows can leave RAM."""
    if directory is None:
        return torch.empty((rows, *shape), dtype=dtype)
    numel = rows * math.prod(shape)
    path = Path(directory) / f"{name}.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(numel * torch.empty(0, dtype=dtype).element_size())
    return torch.from_file(str(path), shared=True, size=numel, dtype=dtype).view(rows, *shape)


def bytes_per_image(model, image_size: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of one image's prefix at ``image_size`` in ``dtype`` (what a stored gallery costs per image)."""
    with torch.no_grad():
        grid = model.image_prefix(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    return grid[0].numel() * torch.empty(0, dtype=dtype).element_size()


@torch.no_grad()
def image_prefix_rows(model, paths: list[Path], image_size: int, batch_size: int = 64, bf16: bool = False,
                      dtype: torch.dtype | None = None, directory: str | Path | None = None) -> torch.Tensor:
    """[I, Hs, Ws, Cs] prefixes of the images at ``paths``, read and transformed ``batch_size`` at
    a time as for evaluation. ``dtype``: how they are kept (default: as computed); ``directory``:
    keep them in a memory-mapped file there instead of in RAM."""
    processor = Processor(eval_transforms(image_size))
    device = next(model.parameters()).device
    out = None
    for start in progress(range(0, len(paths), batch_size), "gallery image prefixes"):
        chunk = paths[start:start + batch_size]
        images = torch.stack([processor(Sample(sample_id=str(p), image_id=start + k, image_path=Path(p))).pixel_values
                              for k, p in enumerate(chunk)])
        with eval_autocast(device, bf16):
            grid = model.image_prefix(images.to(device))
        if out is None:
            out = row_storage(len(paths), tuple(grid.shape[1:]), dtype or grid.dtype, directory, "image_prefixes")
        out[start:start + len(chunk)].copy_(grid)  # converts as it copies: no temporary in the stored dtype
    if out is None:
        raise ValueError("no gallery images to compute prefixes of")
    return out


@torch.no_grad()
def text_prefix_rows(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 256,
                     bf16: bool = False, dtype: torch.dtype | None = None,
                     directory: str | Path | None = None) -> torch.Tensor:
    """[T, L, D] prefixes of tokenised texts (input_ids / attention_mask [T, L]); kept as
    :func:`image_prefix_rows` keeps image prefixes."""
    device = next(model.parameters()).device
    out = None
    for start in progress(range(0, input_ids.shape[0], batch_size), "gallery text prefixes"):
        rows = slice(start, start + batch_size)
        with eval_autocast(device, bf16):
            states = model.text_prefix(input_ids[rows].to(device), attention_mask[rows].to(device))
        if out is None:
            out = row_storage(input_ids.shape[0], tuple(states.shape[1:]), dtype or states.dtype, directory, "text_prefixes")
        out[rows].copy_(states)
    if out is None:
        raise ValueError("no gallery texts to compute prefixes of")
    return out


def tokenize_gallery(tokenizer: Tokenizer, texts: list[str], max_length: int):
    """The gallery's texts padded to their longest: (input_ids, attention_mask) [T, L]."""
    tokens = tokenizer(texts, max_length=max_length, padding="longest")
    return tokens.input_ids, tokens.attention_mask

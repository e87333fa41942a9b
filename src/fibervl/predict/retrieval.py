"""Retrieval over a gallery embedded once: images for text queries, or texts for image queries.

:class:`Gallery` holds the dual encoder's L2-normalised ITC embeddings of its items, saved and
loaded as a directory (``gallery.json`` + ``embeddings.safetensors``); candidates are found by
inner product with FAISS (``pip install fibervl[index]``) when it is installed, else by one
matrix product. :class:`RetrievalPredictor` re-ranks each query's ``rerank_k`` best candidates
with ITC + ITM, as evaluation does (:func:`fibervl.tasks.retrieval.rerank_scores`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ..data import DataError
from ..tasks.retrieval import itm_pair_scores
from .base import Predictor, rounded
from .draw import side_by_side, with_text
from .processor import InputProcessor, LoadedImage

# A fixed text embedded with the gallery: loading a gallery for another model (whose embedding
# of it differs) is refused instead of ranking with mixed embeddings.
PROBE_TEXT = "a fibervl gallery probe"


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


@torch.no_grad()
def _embed_probe(model, processor: InputProcessor) -> torch.Tensor:
    tok = processor.tokenizer([PROBE_TEXT], max_length=processor.text_length)
    device = next(model.parameters()).device
    return model.encode_text(tok.input_ids.to(device), tok.attention_mask.to(device)).float().cpu()[0]


class Embedder(Predictor):
    """The dual encoder's side of retrieval: ITC embeddings of images and texts (used to build
    a gallery and to embed queries)."""

    task = "retrieval"

    def embed_images(self, images: list[LoadedImage]) -> torch.Tensor:
        """[B, D] float32 on the CPU."""
        with self.autocast():
            return self.model.encode_image(self.processor.images(images).pixels.to(self.device)).float().cpu()

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """[T, D] float32 on the CPU, ``batch_size`` texts a forward."""
        rows = []
        for (batch,) in self.batches(texts):
            tok = self.processor.text(batch)
            with self.autocast():
                rows.append(self.model.encode_text(tok.input_ids.to(self.device),
                                                   tok.attention_mask.to(self.device)).float().cpu())
        return torch.cat(rows)


class Gallery:
    """``kind`` "image" (``items``: image paths) or "text" (``items``: texts); ``embeddings
    [N, D]`` float32 ITC embeddings, row i of item i; ``probe [D]``: the model's embedding of
    :data:`PROBE_TEXT`, which identifies the model."""

    def __init__(self, kind: str, items: list[str], embeddings: torch.Tensor, probe: torch.Tensor) -> None:
        if kind not in ("image", "text"):
            raise ValueError(f"a gallery holds images or texts, not {kind!r}")
        if embeddings.shape[0] != len(items):
            raise ValueError(f"{embeddings.shape[0]} embeddings for {len(items)} items")
        self.kind, self.items, self.embeddings, self.probe = kind, list(items), embeddings.float(), probe.float()
        self._index = None

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    @torch.no_grad()
    def build(cls, model, processor: InputProcessor, images: Sequence[str | Path] | None = None,
              texts: Sequence[str] | None = None, batch_size: int = 32, bf16: bool = False,
              skip_bad: bool = False) -> "Gallery":
        """Embed ``images`` (paths) or ``texts``. ``skip_bad``: an unreadable image is left out of
        the gallery with a warning instead of failing the build."""
        if (images is None) == (texts is None):
            raise ValueError("a gallery is built from images or from texts (give one of them)")
        embedder = Embedder(model, processor, batch_size, bf16)
        if texts is not None:
            return cls("text", list(texts), embedder.embed_texts(list(texts)), _embed_probe(model, embedder.processor))
        kept, rows = [], []
        for (paths,) in embedder.batches([str(p) for p in images]):
            loaded = []
            for p in paths:
                try:
                    loaded.append(embedder.processor.open(p))
                except DataError as err:
                    if not skip_bad:
                        raise
                    warnings.warn(f"left out of the gallery: {err}", stacklevel=2)
            if loaded:
                rows.append(embedder.embed_images(loaded))
                kept += [im.source for im in loaded]
        if not kept:
            raise ValueError("no readable image to build the gallery from")
        return cls("image", kept, torch.cat(rows), _embed_probe(model, embedder.processor))

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": self.embeddings.contiguous(), "probe": self.probe.contiguous()},
                  str(directory / "embeddings.safetensors"))
        (directory / "gallery.json").write_text(json.dumps({"kind": self.kind, "items": self.items},
                                                           ensure_ascii=False) + "\n", encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Gallery":
        directory = Path(directory)
        if not (directory / "gallery.json").is_file():
            raise FileNotFoundError(f"{directory} holds no saved gallery (gallery.json)")
        meta = json.loads((directory / "gallery.json").read_text(encoding="utf-8"))
        tensors = load_file(str(directory / "embeddings.safetensors"))
        return cls(meta["kind"], meta["items"], tensors["embeddings"], tensors["probe"])

    def check_model(self, model, processor: InputProcessor, atol: float = 1e-3) -> None:
        """Refuse a model whose embeddings differ from those the gallery was built with."""
        probe = _embed_probe(model, processor)
        if probe.shape != self.probe.shape or not torch.allclose(probe, self.probe, atol=atol):
            raise ValueError("this gallery was embedded by another model: build it again with this one")

    def search(self, queries: torch.Tensor, k: int, use_faiss: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``queries [Q, D]`` -> (cosine similarities [Q, k'], item indices [Q, k']) of the k' =
        min(k, N) best items, best first. ``use_faiss`` None: FAISS when it is installed."""
        k = min(k, len(self))
        if use_faiss is None:
            use_faiss = faiss_available()
        if not use_faiss:
            return (queries.float() @ self.embeddings.t()).topk(k, dim=1)
        import faiss

        if self._index is None:  # built once per gallery
            self._index = faiss.IndexFlatIP(self.embeddings.shape[1])
            self._index.add(self.embeddings.contiguous().numpy())
        scores, idx = self._index.search(queries.float().contiguous().numpy(), k)
        return torch.from_numpy(scores), torch.from_numpy(idx).long()


class RetrievalPredictor(Embedder):
    """Rank ``gallery``'s items for each query: text queries for an image gallery, images for a
    text gallery. The ``rerank_k`` best by ITC are re-scored with ITC + w x ITM (the model's ITM
    head; 0 or no ITM head: ITC alone) and rank above the rest, which keep their ITC order.
    ``itm_weight`` w: default the model card's (:attr:`~fibervl.predict.card.ModelCard.itm_weight`).

    ``predict(queries)`` -> per query ``{"query", "ranking": [{"item", "itc", "score"}, ...]}``,
    the ``top`` best (0: the whole gallery); ``score`` is ITC + w x ITM for re-ranked items, ITC
    for the others.
    """

    task = "retrieval"

    def __init__(self, model, processor, gallery: Gallery, rerank_k: int = 16, top: int = 10,
                 batch_size: int = 32, bf16: bool = False, use_faiss: bool | None = None,
                 itm_weight: float | None = None) -> None:
        super().__init__(model, processor, batch_size, bf16)
        gallery.check_model(model, self.processor)
        self.gallery, self.top, self.use_faiss = gallery, top, use_faiss
        self.rerank_k = rerank_k if "itm" in getattr(model.config, "heads", ()) else 0
        self.itm_weight = self.processor.card.itm_weight if itm_weight is None else float(itm_weight)
        if self.itm_weight < 0:
            raise ValueError(f"itm_weight must be >= 0, got {self.itm_weight}")

    @torch.no_grad()
    def predict(self, queries: Sequence) -> list[dict]:
        queries = list(queries)
        if self.gallery.kind == "image" and not all(isinstance(q, str) for q in queries):
            raise ValueError("an image gallery is searched with text queries")
        depth = len(self.gallery) if self.top <= 0 else max(self.top, self.rerank_k)
        out = []
        for (batch,) in self.batches(queries):
            if self.gallery.kind == "image":
                embedded, names = self.embed_texts(batch), batch
            else:
                batch = self.open(batch)
                embedded, names = self.embed_images(batch), [im.source for im in batch]
            itc, idx = self.gallery.search(embedded, depth, self.use_faiss)
            score = itc.clone()
            k = min(self.rerank_k, idx.shape[1])
            if k:
                score[:, :k] += self.itm_weight * self._itm(batch, idx[:, :k]).view(-1, k)
                order = score[:, :k].argsort(dim=1, descending=True, stable=True)
                itc[:, :k], idx[:, :k], score[:, :k] = (t[:, :k].gather(1, order) for t in (itc, idx, score))
            n = idx.shape[1] if self.top <= 0 else min(self.top, idx.shape[1])
            for name, i_row, c_row, s_row in zip(names, idx[:, :n].tolist(), itc[:, :n].tolist(), score[:, :n].tolist()):
                out.append({"query": name, "ranking": [{"item": self.gallery.items[i], "itc": rounded(c), "score": rounded(s)}
                                                       for i, c, s in zip(i_row, c_row, s_row)]})
        return out

    def _itm(self, queries: list, candidates: torch.Tensor) -> torch.Tensor:
        """ITM log-odds of every (query q, candidate candidates[q, j]) pair, row-major: [Q * k]."""
        used, inverse = candidates.flatten().unique(return_inverse=True)
        q = torch.arange(candidates.shape[0]).repeat_interleave(candidates.shape[1])
        if self.gallery.kind == "image":
            images = self.open([self.gallery.items[i] for i in used.tolist()])
            texts, pairs = queries, torch.stack([inverse, q], dim=1)
        else:
            images = queries
            texts, pairs = [self.gallery.items[i] for i in used.tolist()], torch.stack([q, inverse], dim=1)
        pixels = self.processor.images(images).pixels
        tok = self.processor.text(texts)
        return itm_pair_scores(self.model, pixels, tok.input_ids, tok.attention_mask, pairs, self.batch_size, self.bf16)

    def draw(self, result: dict, image: LoadedImage | None = None, shown: int = 5) -> Image.Image:
        """A text query: its ``shown`` best images in a row; an image query: the image over its
        ``shown`` best texts."""
        best = result["ranking"][:shown]
        if self.gallery.kind == "image":
            panels = [with_text(self.processor.open(r["item"]).image, [f"{k + 1}. {r['score']:.2f}"], min_width=1, height=160)
                      for k, r in enumerate(best)]
            return side_by_side(panels, title=f"query: {result['query']}")
        return with_text(image.image, [f"{k + 1}. {r['item']} ({r['score']:.2f})" for k, r in enumerate(best)], height=256)

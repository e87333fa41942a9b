"""What turns files and strings into one model's inputs, and its outputs back into the image's
pixels: image loading (EXIF applied), the evaluation transforms, the tokenizer with the model's
text length, detection prompts and phrase maps, and the answer list of a VQA model."""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..data import Sample, TokenBatch, Tokenizer, build_positive_map, load_image, pad_images
from ..data.image_io import to_rgb
from ..data.transforms import InputSize, eval_transforms
from ..tasks.grounding import SIZE_DIVISIBILITY, PromptChunk, make_processor, prompt_chunks
from .card import ANSWERS_FILE, FINE_TASKS, TOKENIZER_DIR, ModelCard

ImageLike = str | Path | Image.Image


@dataclass
class LoadedImage:
    """An image as the model's outputs refer to it: ``image`` RGB in its displayed orientation
    (EXIF applied), ``source`` its path (None for an image given in memory)."""

    image: Image.Image
    source: str | None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.image.size


@dataclass
class ImageBatch:
    """``pixels [B, 3, H, W]`` (padded to a multiple of ``size_divisibility``), ``input_sizes``
    B (h, w) of each image as the network sees it, before padding."""

    pixels: torch.Tensor
    input_sizes: list[tuple[int, int]]


class InputProcessor:
    """The inputs of one model: ``text_length`` tokens for the fused and dual-encoder tasks,
    ``query_length`` for the detector's prompts (None: no detector); ``normalization``:
    "imagenet" or "official" (converted fine-grained checkpoints); ``answers``: a VQA model's
    answer list (index = head output); ``card``: its directory's model card.

    ``task`` sets :attr:`max_length` (the query length for the fine-grained tasks),
    :attr:`size_divisibility` (batches padded to a multiple of 32 for the detector's strides) and
    the image size: ``image_size`` squares for the coarse tasks, ``detector_size`` (aspect ratio
    kept, :func:`~fibervl.tasks.grounding.detector_input`; default: fit into ``image_size``
    squares) for the fine-grained ones. :meth:`for_task` gives the same processor for another task.
    """

    def __init__(self, tokenizer: Tokenizer, image_size: int, text_length: int, query_length: int | None = None,
                 task: str | None = None, normalization: str = "imagenet", answers: list[str] | None = None,
                 card: ModelCard | None = None, detector_size: InputSize | None = None) -> None:
        self.tokenizer, self.image_size, self.task = tokenizer, image_size, task
        self.text_length, self.query_length = text_length, query_length
        self.normalization, self.answers = normalization, answers
        self.card = card or ModelCard()
        self.detector_size = detector_size or InputSize.square(image_size)
        if task in FINE_TASKS and query_length is None:
            raise ValueError(f"task {task!r} needs a detector's query length (the model has no detector)")
        transforms = self.detector_size.eval_transforms() if task in FINE_TASKS else eval_transforms(image_size)
        self._pipeline = make_processor(transforms, normalization)

    @property
    def max_length(self) -> int:
        return self.query_length if self.task in FINE_TASKS else self.text_length

    @property
    def size_divisibility(self) -> int:
        return SIZE_DIVISIBILITY if self.task in FINE_TASKS else 1

    def for_task(self, task: str) -> "InputProcessor":
        """This processor set up for ``task``."""
        if task == self.task:
            return self
        return InputProcessor(self.tokenizer, self.image_size, self.text_length, self.query_length, task,
                              self.normalization, self.answers, self.card, self.detector_size)

    # ---- images ------------------------------------------------------------------------------
    @staticmethod
    def open(image: ImageLike | LoadedImage) -> LoadedImage:
        """A path (read with :func:`~fibervl.data.load_image`: EXIF orientation applied, odd modes
        converted, bad files refused with a DataError naming them) or a PIL image (converted to
        RGB, used as it is) -> :class:`LoadedImage`."""
        if isinstance(image, LoadedImage):
            return image
        if isinstance(image, Image.Image):
            return LoadedImage(to_rgb(image), None)
        return LoadedImage(load_image(image), str(image))

    def images(self, images: list[LoadedImage]) -> ImageBatch:
        """Transformed, normalised and padded pixels of ``images``."""
        tensors = [self._pipeline(Sample(sample_id=str(k), image_id=k, image=im.image)).pixel_values
                   for k, im in enumerate(images)]
        pixels, _ = pad_images(tensors, self.size_divisibility)
        return ImageBatch(pixels, [tuple(t.shape[1:]) for t in tensors])

    @staticmethod
    def to_original(boxes: torch.Tensor, input_size: tuple[int, int], image: LoadedImage) -> torch.Tensor:
        """``boxes [N, 4]`` xyxy in the network input frame (h, w) -> the original image's pixels."""
        (h, w), (w0, h0) = input_size, image.size
        return boxes * torch.tensor([w0 / w, h0 / h, w0 / w, h0 / h], dtype=boxes.dtype)

    # ---- text --------------------------------------------------------------------------------
    def text(self, texts: list[str], what: str = "texts") -> TokenBatch:
        """Tokenized and padded to the longest; texts longer than ``max_length`` tokens are
        truncated, with a warning that counts them."""
        full = self.tokenizer(texts)
        long = int((full.attention_mask.sum(1) > self.max_length).sum())
        if long:
            warnings.warn(f"{long} of {len(texts)} {what} are longer than {self.max_length} tokens and are truncated",
                          stacklevel=2)
        return self.tokenizer(texts, max_length=self.max_length)

    def phrase_map(self, text: str, phrases: list[str], length: int, offsets) -> torch.Tensor:
        """``[P, length]`` 0/1: which tokens of ``text`` (its ``offsets``) each phrase covers
        (the first occurrence of the phrase in the text). A phrase cut off by truncation is an
        error naming it."""
        spans = []
        for phrase in phrases:
            start = text.find(phrase)
            if start < 0:
                raise ValueError(f"phrase {phrase!r} does not occur in the text {text!r}")
            spans.append([(start, start + len(phrase))])
        pm = build_positive_map(offsets, spans, length)
        lost = [p for p, row in zip(phrases, pm) if row.sum() == 0]
        if lost:
            raise ValueError(f"phrases {lost} fall outside the first {self.max_length} tokens of {text!r}")
        return pm

    def detection_prompts(self, names: list[str], chunk_size: int = 40) -> list[PromptChunk]:
        """Prompts naming every class of ``names`` (labels: their indices), at most
        ``chunk_size`` names each and never more than ``max_length`` tokens: a prompt is closed
        when the next name would not fit. A single name longer than the limit keeps the tokens
        that fit, with a warning (:func:`~fibervl.tasks.grounding.prompt_chunks`)."""
        if not names:
            raise ValueError("detection needs at least one class name")
        return prompt_chunks(dict(enumerate(names)), range(len(names)), self.tokenizer, self.max_length, chunk_size)

    # ---- saving ------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Write what a model directory holds besides the model: ``tokenizer/`` and, for VQA,
        ``answers.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if (directory / TOKENIZER_DIR).is_dir():
            shutil.rmtree(directory / TOKENIZER_DIR)
        self.tokenizer.save(directory / TOKENIZER_DIR)
        if self.answers is not None:
            (directory / ANSWERS_FILE).write_text(json.dumps(self.answers, ensure_ascii=False) + "\n", encoding="utf-8")

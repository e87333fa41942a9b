"""Visual question answering: the answer list's best answers for each (image, question)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from ..tasks.vqa import vqa_topk
from .base import Predictor, per_item, rounded
from .draw import with_text
from .processor import ImageLike, LoadedImage


class VqaPredictor(Predictor):
    """``predict(images, questions)`` (one question per image, or one string for all) -> per
    pair ``{"image", "question", "answer", "top": [{"answer", "score"}, ...]}``: the ``top``
    best answers of the model's answer list; scores are the VQA head's sigmoids."""

    task = "vqa"

    def __init__(self, model, processor, top: int = 5, batch_size: int = 32, bf16: bool = False) -> None:
        super().__init__(model, processor, batch_size, bf16)
        answers = self.processor.answers
        if answers is None:
            raise ValueError("VQA needs the model's answer list (answers.json in its directory, or load(answers=...))")
        if len(answers) != model.config.vqa_num_answers:
            raise ValueError(f"{len(answers)} answers for a VQA head of {model.config.vqa_num_answers} outputs")
        self.answers, self.top = answers, top

    @torch.no_grad()
    def predict(self, images: Sequence[ImageLike | LoadedImage], questions: str | Sequence[str]) -> list[dict]:
        images = self.open(images)
        questions = per_item(questions, len(images), "questions")
        out = []
        for batch, batch_questions in self.batches(images, questions):
            pixels = self.processor.images(batch).pixels
            tok = self.processor.text(batch_questions, "questions")
            scores, idx = vqa_topk(self.model, pixels, tok.input_ids, tok.attention_mask, k=self.top, bf16=self.bf16)
            for image, question, s, i in zip(batch, batch_questions, scores.tolist(), idx.tolist()):
                top = [{"answer": self.answers[a], "score": rounded(p)} for a, p in zip(i, s)]
                out.append({"image": image.source, "question": question, "answer": top[0]["answer"], "top": top})
        return out

    def draw(self, result: dict, image: LoadedImage) -> Image.Image:
        return with_text(image.image, [f"Q: {result['question']}", f"A: {result['answer']} ({result['top'][0]['score']:.2f})"],
                         height=256)

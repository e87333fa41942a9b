"""Fine-tuning on cached image prefixes (tasks/prefix_cache.py): a cached batch trains exactly
as the frozen model on the same (evaluation-transformed) images; files with the same bytes share
one entry; and every misuse is refused with a message."""

from __future__ import annotations

import shutil

import pytest
import torch

from fibervl.data import (
    AnswerVocabulary, DataError, Nlvr2Collator, PairCollator, ProcessedDataset, Processor, Tokenizer, VqaCollator,
)
from fibervl.data.shapes import ShapesDataset
from fibervl.data.transforms import eval_transforms
from fibervl.modeling.factory import fit_to_tokenizer
from fibervl.modeling.fiber import FiberModel
from fibervl.recipes.common import fused_training_data
from fibervl.tasks.caption import CaptionSettings, CaptionTask
from fibervl.tasks.nlvr2 import Nlvr2Task
from fibervl.tasks.prefix_cache import ImagePrefixCache, cached_training_inputs
from fibervl.tasks.pretrain_coarse import CoarseObjectives, CoarsePretrainTask
from fibervl.tasks.vqa import VqaTask
from fibervl.testing.configs import micro_config

SIZE = 64


def _frozen_micro(tokenizer: Tokenizer, **changes) -> FiberModel:
    torch.manual_seed(0)
    model = FiberModel(fit_to_tokenizer(micro_config(), tokenizer).replace(**changes))
    model.freeze_prefix()
    return model


def _step(model, task, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same random draws in both steps (the coarse task's come from its step count)
    if isinstance(task, CoarsePretrainTask):
        task.sampling_steps.zero_()
    loss = task.training_step(model, batch)["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_step(model, task, plain, cached):
    loss_a, grads_a = _step(model, task, plain)
    loss_b, grads_b = _step(model, task, cached)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("task", ["retrieval", "vqa", "nlvr2", "caption"])
def test_cached_batch_trains_like_the_frozen_model_on_the_images(shapes_tiny, task):
    ds = ShapesDataset(shapes_tiny)
    tok = Tokenizer.from_pretrained(ds.tokenizer_dir)
    reader = {"retrieval": ds.captions, "caption": ds.captions, "vqa": ds.vqa, "nlvr2": ds.nlvr2}[task]("train")
    samples = [reader[i] for i in range(8)]
    vocab = AnswerVocabulary.build(reader, max_size=5) if task == "vqa" else None
    model = _frozen_micro(tok, **({"vqa_num_answers": 5} if vocab else {}))
    cache, text_only = cached_training_inputs(model, samples, SIZE, bf16=False, echo=lambda _: None)
    plain_items = [ProcessedDataset(samples, Processor(eval_transforms(SIZE)))[i] for i in range(8)]
    cached_items = [ProcessedDataset(samples, text_only)[i] for i in range(8)]
    assert all(it.pixel_values is None for it in cached_items)
    if task == "vqa":
        collator, step_task = (lambda c=None: VqaCollator(tok, 16, vocab, c)), VqaTask()
    elif task == "nlvr2":
        collator, step_task = (lambda c=None: Nlvr2Collator(tok, 16, c)), Nlvr2Task()
    elif task == "caption":  # caption mode: causal text over the unfused image tokens
        collator, step_task = (lambda c=None: PairCollator(tok, 16, c)), CaptionTask(CaptionSettings())
    else:
        def collator(c=None):
            return PairCollator(tok, 16, c)
        step_task = CoarsePretrainTask(CoarseObjectives(mlm=0.0), model.config.hidden_size, model.config.text.vocab_size,
                                       model.config.text.mask_token_id, (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id))
    plain, cached = collator()(plain_items), collator(cache)(cached_items)
    assert "images" not in cached and cached["image_prefix"].shape[0] == 8
    if task == "nlvr2":
        assert "image2_prefix" in cached and not torch.equal(cached["image_prefix"], cached["image2_prefix"])
    _assert_same_step(model, step_task, plain, cached)


def test_files_with_the_same_bytes_share_one_entry(shapes_tiny, tmp_path):
    tok = Tokenizer.from_pretrained(ShapesDataset(shapes_tiny).tokenizer_dir)
    model = _frozen_micro(tok)
    images = sorted((shapes_tiny / "images" / "train").iterdir())[:3]
    copy = tmp_path / "copy.png"
    shutil.copyfile(images[0], copy)
    cache = ImagePrefixCache.build(model, [*images, copy, images[1]], SIZE, echo=lambda _: None)
    assert len(cache) == 3
    prefixes = cache.lookup([images[0], copy, images[2]])
    assert torch.equal(prefixes[0], prefixes[1]) and not torch.equal(prefixes[0], prefixes[2])
    with pytest.raises(KeyError, match="no cached image prefix"):
        cache.lookup([tmp_path / "other.png"])


def test_misuse_is_refused_with_a_message(shapes_tiny, tmp_path):
    ds = ShapesDataset(shapes_tiny)
    tok = Tokenizer.from_pretrained(ds.tokenizer_dir)
    image = sorted((shapes_tiny / "images" / "train").iterdir())[0]
    torch.manual_seed(0)
    trainable = FiberModel(fit_to_tokenizer(micro_config(), tok))
    with pytest.raises(ValueError, match="frozen prefix"):
        ImagePrefixCache.build(trainable, [image], SIZE, echo=lambda _: None)
    with pytest.raises(ValueError, match="needs model.freeze_prefix=true"):
        fused_training_data(ds.vqa("train"), eval_transforms(SIZE), trainable, True, SIZE, False, "cpu")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        ImagePrefixCache.build(_frozen_micro(tok), [image, broken], SIZE, echo=lambda _: None)
    with pytest.raises(DataError, match="missing.png"):
        ImagePrefixCache.build(_frozen_micro(tok), [tmp_path / "missing.png"], SIZE, echo=lambda _: None)
    with pytest.raises(ValueError, match="GiB"):
        ImagePrefixCache.build(_frozen_micro(tok), [image], SIZE, max_bytes=16, echo=lambda _: None)

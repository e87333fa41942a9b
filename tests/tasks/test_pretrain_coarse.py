"""The coarse pre-training task on the micro model: every loss and every module trains."""

from __future__ import annotations

import pytest
import torch

from fibervl.modeling.fiber import FiberModel
from fibervl.tasks.pretrain_coarse import CoarseObjectives, CoarsePretrainTask
from fibervl.testing.training import pair_batch
from fibervl.testing.configs import micro_config




def make_task(model: FiberModel, **kw) -> CoarsePretrainTask:
    cfg = model.config
    return CoarsePretrainTask(CoarseObjectives(**kw), cfg.hidden_size, cfg.text.vocab_size, cfg.text.mask_token_id,
                              (cfg.text.bos_token_id, cfg.text.eos_token_id, cfg.text.pad_token_id))


def test_one_step_trains_every_part():
    torch.manual_seed(0)
    model = FiberModel(micro_config()).train()
    task = make_task(model, queue_size=8)
    out = task.training_step(model, pair_batch())
    assert set(out) >= {"loss", "itc", "itm", "mlm", "itm_acc", "mlm_acc", "temperature"}
    assert torch.isfinite(out["loss"])
    torch.testing.assert_close(out["loss"].detach(), out["itc"] + out["itm"] + out["mlm"])
    out["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ["temperature", "vision.stages.0.blocks.0.attn.qkv.weight", "text.layers.0.attention.query.weight",
                 "vision.stages.3.blocks.1.i2t.alpha", "text.layers.2.t2i.alpha", "heads.itm.weight",
                 "heads.mlm.decoder.weight", "cross_modal.itc_image_pooler.dense.weight",
                 "cross_modal.text_pooler.dense.weight"]:
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    assert int(task.queue.ptr) == 6 or task.queue.get()[0].shape[0] == 6


def test_losses_fall_on_a_fixed_batch():
    torch.manual_seed(0)
    model = FiberModel(micro_config()).train()
    task = make_task(model)
    batch = pair_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = None
    for step in range(30):
        out = task.training_step(model, batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        task.on_step_end(model, step + 1)
        first = first if first is not None else {k: float(out[k].detach()) for k in ("itc", "mlm", "loss")}
    assert float(out["itc"]) < 0.7 * first["itc"]
    assert float(out["loss"].detach()) < 0.8 * first["loss"]
    assert 0.001 <= model.temperature.item() <= 1.0


def record_negatives(monkeypatch) -> list[torch.Tensor]:
    """Every draw of the coarse task's ``sample_hard_negatives`` from now on, in order."""
    from fibervl.tasks import pretrain_coarse

    seen = []
    real = pretrain_coarse.sample_hard_negatives

    def spy(logits, positive, generator=None, exclude=None, **rows):
        choice = real(logits, positive, generator, exclude, **rows)
        seen.append(choice)
        return choice

    monkeypatch.setattr(pretrain_coarse, "sample_hard_negatives", spy)
    return seen


def test_hard_negatives_skip_pairs_of_the_same_image(monkeypatch):
    """Rows 0 and 1 share image 0: neither may be drawn as the other's negative."""
    seen = record_negatives(monkeypatch)
    model = FiberModel(micro_config()).eval()
    task = make_task(model, mlm=0.0)
    for seed in range(20):
        task.training_step(model, pair_batch(seed=seed))
    for choice in seen:
        assert choice[0] != 1 and choice[1] != 0
        assert (choice != torch.arange(6)).all()


def test_hard_negatives_skip_pairs_with_the_same_caption(monkeypatch):
    """Pairs 3 and 5 have word-for-word the same caption (different images): the caption is true of
    both images, so neither pair may be drawn as the other's negative."""
    seen = record_negatives(monkeypatch)
    model = FiberModel(micro_config()).eval()
    task = make_task(model, mlm=0.0)
    for seed in range(20):
        batch = pair_batch(seed=seed)
        batch["input_ids"][5] = batch["input_ids"][3]
        task.training_step(model, batch)
    assert len(seen) == 40
    for choice in seen:
        assert choice[3] != 5 and choice[5] != 3
        assert choice[0] != 1 and choice[1] != 0


def test_same_text_ignores_padding_and_compares_every_token():
    from fibervl.tasks.objectives import same_text

    ids = torch.tensor([[0, 7, 8, 2, 1], [0, 7, 8, 2, 5], [0, 7, 9, 2, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    # row 1's padding holds another token id: still the same text as row 0
    assert same_text(ids, mask, ids, mask).tolist() == [[True, True, False], [True, True, False],
                                                         [False, False, True]]
    longer = torch.tensor([[1, 1, 1, 1, 1]])
    assert not same_text(ids[:1], mask[:1], ids[:1], longer).any()


def test_random_itm_negatives_ignore_the_itc_similarities(monkeypatch):
    """itm_negatives="random": every other pair (not of the same image) is equally likely to be
    drawn, whatever ITC thinks; "hard" follows the ITC similarities; anything else is an error."""
    import pytest

    from fibervl.tasks import pretrain_coarse

    model = FiberModel(micro_config()).eval()
    # Designed ITC similarities: pair j's image and text are the one-hot e_j, except text 4,
    # which is e_2: for image 2, caption 4 is as similar as its own, every other caption 0.
    images = torch.eye(6, model.config.hidden_size)
    texts = images.clone()
    texts[4] = images[2]
    monkeypatch.setattr(model, "encode_image", lambda pixels=None, image_prefix=None: images)
    monkeypatch.setattr(model, "encode_text", lambda ids, mask, text_prefix=None: texts)
    with torch.no_grad():
        model.temperature.fill_(0.01)
    counts = {}
    real = pretrain_coarse.sample_hard_negatives
    for mode in ("hard", "random"):
        calls = []

        def spy(logits, positive, generator=None, exclude=None, **rows):
            choice = real(logits, positive, generator, exclude, **rows)
            calls.append(choice[2])  # row 2 (image 1) may draw rows 0, 1, 3, 4, 5
            return choice

        monkeypatch.setattr(pretrain_coarse, "sample_hard_negatives", spy)
        task = make_task(model, mlm=0.0, itm_negatives=mode)
        torch.manual_seed(0)
        batch = pair_batch(seed=3)
        for _ in range(100):
            task.training_step(model, batch)
        negative_texts = torch.stack(calls[0::2])  # each step draws a text, then an image
        counts[mode] = torch.bincount(negative_texts, minlength=6)
    assert counts["random"][2] == 0 and counts["hard"][2] == 0
    assert (counts["random"][[0, 1, 3, 4, 5]] >= 8).all(), counts  # ~20 each of 100 draws
    assert counts["hard"][4] == 100, counts  # exp(100) against exp(0): always caption 4
    with pytest.raises(ValueError, match="itm_negatives"):
        CoarseObjectives(itm_negatives="semi-hard")


def test_shared_prefixes_change_nothing_but_the_cost(monkeypatch):
    """The step computes each image's and text's unfused prefix once and re-uses it for ITC, the
    3B ITM pairs and MLM: loss and gradients equal those of the passes run from the inputs, in the
    official layout (ITM images [img, img, img_neg], texts [txt, txt_neg, txt]; MLM on the pairs)."""
    import torch.nn.functional as F

    from fibervl.tasks import pretrain_coarse
    from fibervl.tasks.objectives import itc_logits

    drawn, masked = [], []
    real_negatives, real_mask = pretrain_coarse.sample_hard_negatives, pretrain_coarse.mask_tokens
    monkeypatch.setattr(pretrain_coarse, "sample_hard_negatives", lambda *a, **k: drawn.append(real_negatives(*a, **k)) or drawn[-1])
    monkeypatch.setattr(pretrain_coarse, "mask_tokens", lambda *a, **k: masked.append(real_mask(*a, **k)) or masked[-1])
    torch.manual_seed(0)
    model = FiberModel(micro_config()).train()
    task = make_task(model)
    batch = pair_batch()
    out = task.training_step(model, batch)
    model.zero_grad()
    out["loss"].backward()
    g_shared = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    images, ids, mask = batch["images"], batch["input_ids"], batch["attention_mask"]
    neg_text, neg_image = drawn
    itc = itc_logits(model.encode_image(images), model.encode_text(ids, mask), model.temperature).loss
    itm_logits = model.itm_logits(model.fuse(torch.cat([images, images, images[neg_image]]),
                                             torch.cat([ids, ids[neg_text], ids]),
                                             torch.cat([mask, mask[neg_text], mask])).cls_feats)
    itm = F.cross_entropy(itm_logits, torch.tensor([1] * 6 + [0] * 12))
    masked_ids, labels = masked[0]
    chosen = labels != -100
    mlm = F.cross_entropy(model.mlm_logits(model.fuse(images, masked_ids, mask).text_feats[chosen]), labels[chosen])
    model.zero_grad()
    (itc + itm + mlm).backward()
    g_plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for value, key in ((itc, "itc"), (itm, "itm"), (mlm, "mlm")):
        torch.testing.assert_close(out[key], value.detach(), rtol=1e-5, atol=1e-6)
    assert g_shared.keys() == g_plain.keys()
    largest = max(g.abs().max().item() for g in g_plain.values())
    for name in g_plain:  # the same sums in another order: float rounding only
        torch.testing.assert_close(g_shared[name], g_plain[name], rtol=1e-4, atol=1e-6 * largest, msg=name)


def test_two_identical_coarse_steps_give_bitwise_equal_gradients():
    """Exact resume needs a deterministic step: ITM reuses each prefix for several pairs, and the
    gradient of repeated rows must be summed in a fixed order (2 threads, fiber-tiny)."""
    from fibervl.config import get_preset

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = get_preset("fiber-tiny")
        g = torch.Generator().manual_seed(1)
        batch = {"images": torch.randn(32, 3, 128, 128, generator=g),
                 "input_ids": torch.randint(5, 500, (32, 20), generator=g),
                 "attention_mask": torch.ones(32, 20, dtype=torch.long)}
        grads = []
        for _ in range(2):
            torch.manual_seed(0)
            model = FiberModel(cfg).train()
            task = CoarsePretrainTask(CoarseObjectives(), cfg.hidden_size, cfg.text.vocab_size, cfg.text.mask_token_id,
                                      (0, 1, 2))
            task.training_step(model, batch)["loss"].backward()
            grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
        differ = [n for n in grads[0] if not torch.equal(grads[0][n], grads[1][n])]
        assert not differ, differ[:5]
    finally:
        torch.set_num_threads(threads)


def test_step_draws_come_from_the_seed_and_the_checkpointed_step_count():
    """Each step's generator depends only on (seed, steps taken): the same on every rank, a new
    one every step, another for another seed; the count is task state, and a checkpoint written
    before it existed loads with the count at 0."""
    model = FiberModel(micro_config())

    def draws(task, steps=2):
        return [torch.rand(4, generator=task.step_generator(torch.device("cpu"))) for _ in range(steps)]

    a, b = draws(make_task(model)), draws(make_task(model))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], a[1])
    other = CoarsePretrainTask(CoarseObjectives(), 24, 100, 99, (0, 1, 2), seed=1)
    assert not torch.equal(draws(other, 1)[0], a[0])
    task = make_task(model)
    draws(task, 1)
    resumed = make_task(model)
    resumed.load_state_dict(task.state_dict())
    assert int(resumed.sampling_steps) == 1 and torch.equal(draws(resumed, 1)[0], a[1])
    resumed.load_state_dict({})
    assert int(resumed.sampling_steps) == 0


@pytest.mark.parametrize("preset", ["fiber-tiny", "albef-tiny"])
def test_every_trainable_parameter_gets_a_gradient(preset):
    """What DDP needs of a pre-training model (a trainable parameter without a gradient stops
    the second step under torchrun): the heads no pre-training step reaches are frozen."""
    from fibervl.modeling.factory import create_model
    from fibervl.recipes.image_text import freeze_unreached_parts

    torch.manual_seed(0)
    model = create_model(preset, seed=None).train()
    frozen = freeze_unreached_parts(model)
    assert {"heads.vqa", "heads.nlvr2"} <= set(frozen) or preset != "fiber-tiny"
    cfg = model.config
    itc_dim = getattr(cfg, "embed_dim", cfg.hidden_size)
    task = CoarsePretrainTask(CoarseObjectives(queue_size=8), itc_dim, cfg.text.vocab_size, cfg.text.mask_token_id,
                              (cfg.text.bos_token_id, cfg.text.eos_token_id, cfg.text.pad_token_id))
    g = torch.Generator().manual_seed(0)
    size = cfg.vision.image_size
    ids = torch.randint(4, cfg.text.vocab_size - 1, (4, 10), generator=g)
    ids[:, 0], ids[:, -1] = cfg.text.bos_token_id, cfg.text.eos_token_id
    batch = {"images": torch.randn(4, 3, size, size, generator=g), "input_ids": ids,
             "attention_mask": torch.ones_like(ids), "image_ids": torch.arange(4)}
    task.training_step(model, batch)["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing

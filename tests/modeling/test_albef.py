"""ALBEF: the model (sizes, modes, save/load), the pre-training task (momentum update, queues,
distillation, training), the recipe, and the fine-tuning tasks with an ALBEF model."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fibervl.cli import main
from fibervl.errors import ConfigError
from fibervl.data import Nlvr2Collator, PairCollator, ProcessedDataset, Processor, Tokenizer, VqaCollator
from fibervl.data.shapes import ShapesDataset
from fibervl.data.transforms import eval_transforms
from fibervl.experiment import ModelSpec
from fibervl.modeling.albef import AlbefConfig, AlbefModel
from fibervl.modeling.factory import create_model, fit_to_tokenizer, list_presets, preset_config, read_model_config
from fibervl.tasks.nlvr2 import Nlvr2Task
from fibervl.tasks.objectives import FeatureQueue, itc_logits
from fibervl.tasks.pretrain_albef import (
    AlbefObjectives, AlbefPretrainTask, distillation_targets, momentum_itc, momentum_update_,
)
from fibervl.tasks.pretrain_coarse import CoarseObjectives, CoarsePretrainTask
from fibervl.tasks.vqa import VqaTask
from fibervl.data import AnswerVocabulary
from fibervl.testing.training import pair_batch, train_losses
from fibervl.testing.configs import albef_micro_config




def micro_model(**changes) -> AlbefModel:
    torch.manual_seed(0)
    return AlbefModel(albef_micro_config(**changes))


# ---- the model ------------------------------------------------------------------------------

def test_presets_are_registered_in_the_albef_family():
    presets = list_presets()
    assert presets["albef-base"] == "albef" and presets["albef-tiny"] == "albef"
    assert preset_config("albef-tiny").family == "albef"


def test_albef_base_parameter_count_matches_the_architecture():
    """Counted by hand: ViT-B/16 at 256 px, BERT-base (30522 tokens, 512 positions, 2 types) with
    cross-attention in the top 6 layers, 256-d ITC projections, ITM Linear(2H, 2), MLM head."""
    d, ff, v = 768, 3072, 30522
    linear = lambda i, o: i * o + o  # noqa: E731
    ln = 2 * d
    block = 4 * linear(d, d) + linear(d, ff) + linear(ff, d) + 2 * ln  # attention + FFN + 2 norms
    assert block == 7_087_872
    vit = (3 * 16 * 16 * d + d) + d + (1 + 16 * 16) * d + 12 * block + ln
    text = v * d + 512 * d + 2 * d + ln + 12 * block
    cross = 6 * (4 * linear(d, d) + ln)
    heads = 2 * linear(d, 256) + 1 + linear(2 * d, 2) + (linear(d, d) + ln + v * d + v)
    expected = vit + text + cross + heads
    assert expected == 233_380_157
    with torch.device("meta"):  # no memory, no initialisation cost
        model = AlbefModel(preset_config("albef-base"))
    assert sum(p.numel() for p in model.vision.parameters()) == vit == 85_844_736
    assert model.fusion_parameters() == {"cross_attention": cross}
    assert sum(p.numel() for p in model.parameters()) == expected
    # ALBEF ties the MLM decoder to the word embeddings and its ITM head reads the text CLS
    # only: the original's count is ours minus the untied decoder and the image half of ITM.
    assert expected - v * d - 2 * d == 209_937_725


def test_config_round_trip_and_unknown_keys(tmp_path):
    cfg = albef_micro_config()
    cfg.save(tmp_path / "config.json")
    assert AlbefConfig.load(tmp_path / "config.json") == cfg
    data = cfg.to_dict()
    data["vision"]["nonesuch"] = 1
    with pytest.raises(ConfigError, match="nonesuch"):
        AlbefConfig.from_dict(data)
    with pytest.raises(ConfigError, match="hidden_size"):
        albef_micro_config(hidden_size=48)
    with pytest.raises(ConfigError, match="fusion_layers"):
        albef_micro_config(fusion_layers=4)


def test_cross_attention_runs_only_in_the_fusion_layers_and_only_when_fusing():
    model = micro_model().eval()
    b = pair_batch()
    calls = []
    for i, layer in enumerate(model.text.layers):
        if hasattr(layer, "cross"):
            layer.cross.register_forward_hook(lambda m, args, out, i=i: calls.append(i))
    assert [hasattr(layer, "cross") for layer in model.text.layers] == [False, True, True]
    img = model.encode_image(b["images"])
    txt = model.encode_text(b["input_ids"], b["attention_mask"])
    assert calls == [] and img.shape == txt.shape == (6, 24)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(6))
    out = model.fuse(b["images"], b["input_ids"], b["attention_mask"])
    assert calls == [1, 2]
    assert out.text_feats.shape == (6, 8, 32) and out.cls_feats.shape == (6, 64) and out.image_stages == []
    assert out.image_feats.shape == (6, 17, 32)
    assert model.itm_logits(out.cls_feats).shape == (6, 2)
    assert model.vqa_logits(out.cls_feats).shape == (6, 7)
    assert model.nlvr2_logits(out.cls_feats, out.cls_feats).shape == (6, 2)
    assert model.mlm_logits(out.text_feats).shape == (6, 8, 100)
    # The image reaches the text only through the fusion layers: the text-only states ignore it.
    other = model.fuse(b["images"].flip(0), b["input_ids"], b["attention_mask"])
    assert not torch.allclose(other.text_feats, out.text_feats)
    torch.testing.assert_close(model.text_hidden(b["input_ids"], b["attention_mask"]),
                               model.text.encode(b["input_ids"], b["attention_mask"]))


def test_vit_interpolates_positions_for_another_resolution():
    model = micro_model().eval()
    assert model.image_tokens(torch.randn(2, 3, 96, 96)).shape == (2, 37, 32)


def test_save_load_round_trip_is_bit_exact(tmp_path):
    model = micro_model().eval()
    model.save_pretrained(tmp_path)
    assert read_model_config(tmp_path).family == "albef"
    loaded = create_model(tmp_path).eval()
    assert type(loaded) is AlbefModel and loaded.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and a.equal(b), k
    b = pair_batch()
    assert loaded.fuse(b["images"], b["input_ids"], b["attention_mask"]).cls_feats.equal(
        model.fuse(b["images"], b["input_ids"], b["attention_mask"]).cls_feats)


# ---- the pre-training task ------------------------------------------------------------------

def test_momentum_update_formula_is_exact():
    model, mom = micro_model(), micro_model()
    with torch.no_grad():
        for i, (p, pm) in enumerate(zip(model.parameters(), mom.parameters())):
            # Dyadic values: m * pm + (1 - m) * p is exact in fp32 for m = 0.75, whatever the order.
            p.copy_(torch.randint(-64, 64, p.shape).float() / 8)
            pm.copy_(torch.randint(-64, 64, pm.shape).float() / 8)
    before = {k: v.clone() for k, v in mom.named_parameters()}
    momentum_update_(mom, model, 0.75)
    params = dict(model.named_parameters())
    for k, pm in mom.named_parameters():
        assert pm.equal(0.75 * before[k] + 0.25 * params[k]), k
    # A general momentum, to rounding.
    momentum_update_(mom, model, 0.995)
    for k, pm in mom.named_parameters():
        expected = 0.995 * (0.75 * before[k] + 0.25 * params[k]) + 0.005 * params[k]
        torch.testing.assert_close(pm, expected, rtol=1e-6, atol=1e-6)


def test_task_holds_a_frozen_momentum_copy_updated_after_each_step():
    model = micro_model().train()
    task = AlbefPretrainTask(model, AlbefObjectives(queue_size=0, momentum=0.5), (0, 1, 2))
    assert all(not p.requires_grad for p in task.momentum_model.parameters())
    assert any(k.startswith("momentum_model.") for k in task.state_dict())  # checkpointed with the task
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    task.training_step(model, pair_batch())["loss"].backward()
    before = {k: v.clone() for k, v in task.momentum_model.named_parameters()}
    opt.step()
    task.on_step_end(model, 1)
    params = dict(model.named_parameters())
    for k, pm in task.momentum_model.named_parameters():
        torch.testing.assert_close(pm, 0.5 * before[k] + 0.5 * params[k], rtol=0, atol=1e-6)
    assert int(task.steps) == 1 and 0.001 <= model.temperature.item() <= 0.5


def test_queue_enqueue_order_and_wrap():
    q = FeatureQueue(2, size=4)
    feats = torch.arange(12, dtype=torch.float32).view(6, 2)
    q.enqueue(feats[:3], -feats[:3])
    img, txt = q.get()
    assert img.equal(feats[:3]) and txt.equal(-feats[:3]) and int(q.ptr) == 3 and int(q.count) == 3
    q.enqueue(feats[3:], -feats[3:])  # wraps: slots 3, 0, 1 overwritten
    img, txt = q.get()
    assert img.equal(feats[2:]) and txt.equal(-feats[2:])  # the last 4, oldest first
    assert int(q.ptr) == 2 and int(q.count) == 4
    assert q.image[0].equal(feats[4]) and q.image[3].equal(feats[3])


def test_task_enqueues_the_momentum_embeddings_of_the_batch():
    model = micro_model().train()
    task = AlbefPretrainTask(model, AlbefObjectives(queue_size=16), (0, 1, 2))
    batch = pair_batch()
    task.training_step(model, batch)
    with torch.no_grad():
        expected_img = task.momentum_model.encode_image(batch["images"])
        expected_txt = task.momentum_model.encode_text(batch["input_ids"], batch["attention_mask"])
    img, txt = task.queue.get()
    torch.testing.assert_close(img, expected_img)
    torch.testing.assert_close(txt, expected_txt)
    out = task.training_step(model, batch)  # the queue now adds 6 columns
    assert torch.isfinite(out["loss"]) and int(task.queue.count) == 12


def test_distillation_targets():
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(5, 9, generator=g)
    hard = torch.zeros(5, 9)
    hard[torch.arange(5), torch.arange(5)] = 1.0
    assert distillation_targets(sim, hard, 0.0).equal(hard)
    mixed = distillation_targets(sim, hard, 0.4)
    torch.testing.assert_close(mixed.sum(dim=1), torch.ones(5))
    torch.testing.assert_close(mixed, 0.4 * sim.softmax(dim=1) + 0.6 * hard)
    torch.testing.assert_close(distillation_targets(sim, hard, 1.0), sim.softmax(dim=1))


def test_momentum_itc_reduces_to_infonce_and_uses_the_queue():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    # alpha = 0 with the momentum features equal to the model's: plain InfoNCE.
    out = momentum_itc(img, txt, img, txt, 0.07, alpha=0.0)
    torch.testing.assert_close(out.loss, itc_logits(img, txt, 0.07, gather=False).loss)
    # alpha > 0: targets mix in the momentum model's own similarities, over batch + queue columns.
    q = FeatureQueue(8, 3)
    q.enqueue(F.normalize(torch.randn(3, 8, generator=g), dim=-1), F.normalize(torch.randn(3, 8, generator=g), dim=-1))
    img_m = F.normalize(img + 0.1 * torch.randn(4, 8, generator=g), dim=-1)
    txt_m = F.normalize(txt + 0.1 * torch.randn(4, 8, generator=g), dim=-1)
    out = momentum_itc(img, txt, img_m, txt_m, 0.07, alpha=0.4, queue=q)
    assert out.sim_i2t.shape == out.targets_t2i.shape == (4, 7)
    cols_txt = torch.cat([txt_m, q.get()[1]])
    hard = torch.zeros(4, 7)
    hard[:, :4] = torch.eye(4)
    torch.testing.assert_close(out.targets_i2t, 0.4 * (img_m @ cols_txt.t() / 0.07).softmax(1) + 0.6 * hard)
    # Same-image positives share the one-hot mass.
    pos = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    out = momentum_itc(img, txt, img_m, txt_m, 0.07, alpha=0.0, positives=pos)
    assert out.targets_i2t[0, :2].tolist() == [0.5, 0.5]


def test_pretrain_loss_falls_on_a_fixed_batch_and_every_part_trains():
    model = micro_model().train()
    task = AlbefPretrainTask(model, AlbefObjectives(queue_size=0), (0, 1, 2))
    batch = pair_batch()
    out = task.training_step(model, batch)
    assert set(out) >= {"loss", "itc", "itm", "mlm", "itm_acc", "mlm_acc", "temperature", "alpha"}
    out["loss"].backward()
    unused = {n for n, p in model.named_parameters() if p.grad is None}
    assert unused == {n for n, _ in model.named_parameters() if n.startswith(("heads.vqa.", "heads.nlvr2."))}
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses, itc = [], []
    torch.manual_seed(1)
    for step in range(15):
        out = task.training_step(model, batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        task.on_step_end(model, step + 1)
        losses.append(out["loss"].item())
        itc.append(out["itc"].item())
    # MLM over a random 15 % of tokens is noisy and slow; the total still falls, ITC clearly.
    assert sum(losses[-3:]) < 0.9 * sum(losses[:3])
    assert itc[-1] < 0.75 * itc[0]


def test_alpha_warms_up():
    task = AlbefPretrainTask(micro_model(), AlbefObjectives(alpha=0.4, alpha_warmup_steps=4, queue_size=0), (0, 1, 2))
    assert task.current_alpha() == 0.0
    task.steps += 2
    assert task.current_alpha() == pytest.approx(0.2)
    task.steps += 10
    assert task.current_alpha() == pytest.approx(0.4)


# ---- recipe and fine-tuning -------------------------------------------------------------------

def _albef_for(tokenizer: Tokenizer, **changes) -> AlbefModel:
    cfg = albef_micro_config()
    torch.manual_seed(0)
    return AlbefModel(fit_to_tokenizer(cfg, tokenizer).replace(**changes))


def test_vqa_nlvr2_and_retrieval_tasks_train_an_albef_model(shapes_tiny):
    ds = ShapesDataset(shapes_tiny)
    tok = Tokenizer.from_pretrained(ds.tokenizer_dir)
    reader = ds.vqa("train")
    vocab = AnswerVocabulary.build(reader, max_size=7)
    items = [ProcessedDataset(reader, Processor(eval_transforms(64)))[i] for i in range(8)]
    losses = train_losses(_albef_for(tok), VqaTask(), VqaCollator(tok, 16, vocab)(items), steps=20)
    assert losses[-1] < 0.6 * losses[0]

    items = [ProcessedDataset(ds.nlvr2("train"), Processor(eval_transforms(64)))[i] for i in range(8)]
    losses = train_losses(_albef_for(tok), Nlvr2Task(), Nlvr2Collator(tok, 16)(items), steps=15)
    assert losses[-1] < 0.5 * losses[0]

    model = _albef_for(tok)
    # One caption of each of 8 images (the set has 5 captions per image).
    items = [ProcessedDataset(ds.captions("train"), Processor(eval_transforms(64)))[5 * i] for i in range(8)]
    batch = PairCollator(tok, 16)(items)
    specials = (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    task = CoarsePretrainTask(CoarseObjectives(mlm=0.0), model.config.embed_dim, tok.vocab_size, tok.mask_token_id,
                              specials)
    torch.manual_seed(0)
    losses = train_losses(model, task, batch, steps=20, lr=5e-4)  # 2e-3 collapses the micro ViT on shapes
    assert losses[-1] < 0.8 * losses[0]
    # The ITC queue holds embed_dim (24) wide embeddings, not hidden_size (32).
    task = CoarsePretrainTask(CoarseObjectives(mlm=0.0, queue_size=8), model.config.embed_dim, tok.vocab_size,
                              tok.mask_token_id, specials)
    task.training_step(model, batch)
    assert torch.isfinite(task.training_step(model, batch)["loss"]) and int(task.queue.count) == 8


def test_task_model_from_an_albef_directory_adds_the_vqa_head(shapes_tiny, tmp_path):
    tok = Tokenizer.from_pretrained(ShapesDataset(shapes_tiny).tokenizer_dir)
    base = _albef_for(tok, heads=("itc", "itm", "mlm"))
    base.save_pretrained(tmp_path / "run" / "model")
    model, report = ModelSpec(init=str(tmp_path / "run")).build(tok, new_heads=("vqa",), config_changes={"vqa_num_answers": 11},
                                                                with_report=True)
    assert isinstance(model, AlbefModel) and model.config.vqa_num_answers == 11
    assert report.new and all(k.startswith("heads.vqa.") for k in report.new)
    for k, v in base.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_cli_pretrain_albef_resumes_exports_and_fine_tunes(shapes_tiny, tmp_path, capsys):
    preset = tmp_path / "albef_micro"
    preset.mkdir()
    albef_micro_config(heads=("itc", "itm", "mlm")).save(preset / "config.json")
    run_dir = tmp_path / "run"
    args = ["pretrain", "albef", "--config", "configs/albef-tiny_pretrain_shapes.yaml", f"data.root={shapes_tiny}",
            f"model.preset={preset}", f"train.run_dir={run_dir}", "train.batch_size=6", "train.progress_bar=false",
            "train.ckpt_every=2", "train.eval_every=null", "data.num_eval=10", "objectives.queue_size=8",
            "train.precision=fp32"]
    assert main(args + ["train.max_steps=2"]) == 0
    state = torch.load(run_dir / "checkpoints" / "step_00000002" / "state.pt", weights_only=True)
    assert any(k.startswith("momentum_model.") for k in state["task"]) and int(state["task"]["queue.count"]) == 8
    assert main(args + ["train.max_steps=3", "--resume"]) == 0
    assert "i2t_r1=" in capsys.readouterr().out
    model = create_model(run_dir / "model")
    assert isinstance(model, AlbefModel)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["images"] == 10
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("step", 0) for r in log) == 3
    # The export starts a fine-tuning recipe unchanged (VQA: a new head on the ALBEF features).
    vqa = tmp_path / "vqa"
    assert main(["finetune", "vqa", "--config", "configs/fiber-tiny_vqa_shapes.yaml", "--init", str(run_dir),
                 f"data.root={shapes_tiny}", f"--run-dir={vqa}", "train.batch_size=4", "train.progress_bar=false",
                 "train.ckpt_every=null", "train.max_steps=2", "data.num_eval=6", "train.precision=fp32",
                 # the config names FIBER's groups (cross_modal); ALBEF's head is its own
                 "train.optim.lr_multipliers={heads: 33}"]) == 0
    assert isinstance(create_model(vqa / "model"), AlbefModel)

"""VLMo: expert routing by modality, shared attention, dual encoding, staged pre-training with
real freezing, save/load, the recipe end to end and the fine-tuning tasks with a VLMo model."""

from __future__ import annotations

import json

import pytest
import torch

from fibervl.config import TextConfig
from fibervl.errors import ConfigError
from fibervl.data import AnswerVocabulary, Nlvr2Collator, ProcessedDataset, Processor, Tokenizer, VqaCollator
from fibervl.data.shapes import ShapesDataset
from fibervl.data.transforms import eval_transforms
from fibervl.engine.optim import OptimConfig, build_optimizer
from fibervl.modeling.factory import fit_to_tokenizer
from fibervl.modeling.factory import create_model, preset_config, read_model_config
from fibervl.modeling.vlmo import VlmoConfig, VlmoModel, VlmoVisionConfig
from fibervl.tasks.nlvr2 import Nlvr2Task
from fibervl.tasks.pretrain_coarse import CoarseObjectives, CoarsePretrainTask
from fibervl.tasks.pretrain_vlmo import MimTask, TextMlmTask, patchify, random_patch_mask, set_stage_trainable
from fibervl.tasks.vqa import VqaTask


def micro_vlmo(**changes) -> VlmoConfig:
    """4 blocks of width 32 (top 2 with VL-FFN), 32 px images in 8 px patches (16 + 1 tokens)."""
    text = TextConfig(vocab_size=100, hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64,
                      max_position_embeddings=40, mask_token_id=99, dropout=0.0, max_text_len=16)
    base = VlmoConfig(name="micro-vlmo", vision=VlmoVisionConfig(image_size=32, patch_size=8), text=text,
                      hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64, vl_layers=2,
                      drop_path_rate=0.0, vqa_num_answers=7)
    return base.replace(**changes)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return VlmoModel(micro_vlmo())


@pytest.fixture
def pairs():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 32, 32, generator=g)
    ids = torch.randint(4, 99, (4, 7), generator=g)
    ids[:, 0] = 0
    ids[:, -1] = 2
    ids[1, 4:] = 1
    ids[1, 3] = 2
    return images, ids, ids.ne(1).long()


# ---- architecture --------------------------------------------------------------------------

def _count_expert_calls(model: VlmoModel) -> dict[tuple[int, str], int]:
    calls: dict[tuple[int, str], int] = {}
    for i, block in enumerate(model.blocks):
        for name, expert in block.experts.items():
            expert.register_forward_hook(lambda m, a, o, key=(i, name): calls.__setitem__(key, calls.get(key, 0) + 1))
    return calls


def test_experts_are_routed_by_modality(model, pairs):
    images, ids, mask = pairs
    calls = _count_expert_calls(model)
    model.encode_image(images)
    assert set(calls) == {(i, "image") for i in range(4)}
    calls.clear()
    model.encode_text(ids, mask)
    assert set(calls) == {(i, "text") for i in range(4)}
    calls.clear()
    model.fuse(images, ids, mask)
    # bottom blocks: text tokens to the L-FFN, image tokens to the V-FFN; top 2: VL-FFN only
    assert set(calls) == {(0, "text"), (0, "image"), (1, "text"), (1, "image"), (2, "vl"), (3, "vl")}
    assert "vl" not in model.blocks[0].experts and "vl" in model.blocks[2].experts


def test_fused_bottom_blocks_send_each_token_to_its_own_expert(model, pairs):
    images, ids, mask = pairs
    seen = {}
    block = model.blocks[0]
    for name in ("text", "image"):
        block.experts[name].register_forward_hook(lambda m, a, o, name=name: seen.__setitem__(name, a[0].shape[1]))
    model.fuse(images, ids, mask)
    assert seen == {"text": ids.shape[1], "image": 1 + 16}


def test_attention_is_one_module_shared_by_all_modes(model, pairs):
    images, ids, mask = pairs
    used = {}
    for i, block in enumerate(model.blocks):
        block.attention.register_forward_hook(lambda m, a, o, i=i: used.setdefault(i, set()).add(id(m)))
    model.encode_image(images)
    model.encode_text(ids, mask)
    model.fuse(images, ids, mask)
    assert all(len(ids_) == 1 for ids_ in used.values()) and len(used) == 4
    # one attention per block in the parameters too: no per-modality copy
    assert sum(".attention.query.weight" in n for n, _ in model.named_parameters()) == 4


def test_dual_encoding_is_independent_of_the_other_modality(model, pairs):
    images, ids, mask = pairs
    model.eval()
    img = model.encode_image(images)
    assert img.shape == (4, 32) and torch.allclose(img.norm(dim=-1), torch.ones(4))
    # each image's embedding depends on that image alone (no batch or text interaction)
    assert torch.allclose(model.encode_image(images[:1]), img[:1], atol=1e-6)
    txt = model.encode_text(ids, mask)
    assert torch.allclose(model.encode_text(ids[2:3], mask[2:3]), txt[2:3], atol=1e-6)
    # padding does not change a text's embedding
    padded = torch.cat([ids, ids.new_ones(4, 3)], dim=1)
    assert torch.allclose(model.encode_text(padded, padded.ne(1).long()), txt, atol=1e-5)
    # the fused output does depend on the text
    out1 = model.fuse(images, ids, mask).cls_feats
    out2 = model.fuse(images, ids.roll(1, dims=0), mask.roll(1, dims=0)).cls_feats
    assert not torch.allclose(out1, out2)


def test_fuse_shapes_and_heads(model, pairs):
    images, ids, mask = pairs
    out = model.fuse(images, ids, mask)
    assert out.text_feats.shape == (4, 7, 32) and out.image_feats.shape == (4, 17, 32) and out.cls_feats.shape == (4, 64)
    assert model.itm_logits(out.cls_feats).shape == (4, 2)
    assert model.mlm_logits(out.text_feats).shape == (4, 7, 100)
    assert model.vqa_logits(out.cls_feats).shape == (4, 7)
    assert model.nlvr2_logits(out.cls_feats, out.cls_feats).shape == (4, 2)
    assert model.itc_logits(model.encode_image(images), model.encode_text(ids, mask)).shape == (4, 4)
    assert model.fusion_parameters() == {"vl_ffn": 2 * (2 * 32 + 32 * 64 + 64 + 64 * 32 + 32)}


def test_vlmo_base_parameter_count_by_hand():
    """Counted from the architecture, not from the code: H=768, FFN I=3072, 12 blocks, VL-FFN in
    2, RoBERTa vocabulary V=50265 with P=514 positions, 196 patches + CLS, A=3129 VQA answers."""
    h, i, v, p, a = 768, 3072, 50265, 514, 3129
    text_emb = v * h + p * h + 1 * h + 2 * h  # words, positions, token type, LayerNorm
    image_emb = (3 * 16 * 16 * h + h) + h + 197 * h  # conv patch embedding, CLS, positions
    modality_type = 2 * h
    attention = 4 * (h * h + h) + 2 * h  # q, k, v, out + pre-norm
    ffn = 2 * h + (h * i + i) + (i * h + h)  # expert LayerNorm + two linears
    blocks = 12 * (attention + 2 * ffn) + 2 * ffn
    final_norm = 2 * h
    itc = 2 * h * h + 1  # two bias-free projections + temperature
    poolers = 2 * (h * h + h)
    itm = 2 * h * 2 + 2
    mlm = (h * h + h) + 2 * h + h * v + v
    vqa = (2 * h * 2 * h + 2 * h) + 2 * (2 * h) + (2 * h * a + a)
    nlvr2 = (4 * h * 2 * h + 2 * h) + 2 * (2 * h) + (2 * h * 2 + 2)
    expected = (text_emb + image_emb + modality_type + blocks + final_norm + itc + poolers + itm + mlm + vqa + nlvr2)
    assert expected == 244_445_591
    with torch.device("meta"):
        base = VlmoModel(preset_config("vlmo-base"))
    assert sum(t.numel() for t in base.parameters()) == expected
    assert base.fusion_parameters()["vl_ffn"] == 2 * ffn


def test_config_round_trip_and_validation(tmp_path):
    cfg = preset_config("vlmo-tiny")
    cfg.save(tmp_path / "c.json")
    assert VlmoConfig.load(tmp_path / "c.json") == cfg
    data = cfg.to_dict() | {"bogus": 1}
    with pytest.raises(ConfigError, match="bogus"):
        VlmoConfig.from_dict(data)
    with pytest.raises(ConfigError, match="text.hidden_size"):
        micro_vlmo(hidden_size=64)
    with pytest.raises(ConfigError, match="vl_layers"):
        micro_vlmo(vl_layers=5)
    with pytest.raises(ConfigError, match="caption"):
        micro_vlmo(heads=("itc", "caption"))


def test_save_load_round_trip_is_bit_exact(model, pairs, tmp_path):
    model.save_pretrained(tmp_path / "m")
    assert read_model_config(tmp_path / "m").family == "vlmo"
    loaded = create_model(tmp_path / "m")
    assert isinstance(loaded, VlmoModel) and loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    images, ids, mask = pairs
    model.eval(), loaded.eval()
    assert torch.equal(model.fuse(images, ids, mask).cls_feats, loaded.fuse(images, ids, mask).cls_feats)


# ---- staged pre-training -------------------------------------------------------------------

def _batch(pairs):
    images, ids, mask = pairs
    return {"images": images, "input_ids": ids, "attention_mask": mask, "image_ids": torch.arange(4)}


def _train(model, task, batch, steps, lr=1e-3, weight_decay=0.0, same_masks=False):
    named = list(model.named_parameters()) + [(f"task.{n}", p) for n, p in task.named_parameters()]
    opt = build_optimizer(named, OptimConfig(lr=lr, weight_decay=weight_decay))
    losses = []
    for _ in range(steps):
        if same_masks:  # the task draws its masks from the global generator: the same ones each step
            torch.manual_seed(0)
        loss = task.training_step(model, batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return opt, losses


def test_patchify_matches_the_patch_order_of_the_embedding():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float).reshape(2, 3, 4, 4)
    p = patchify(images, 2)
    assert p.shape == (2, 4, 12)
    assert torch.equal(p[0, 1].reshape(2, 2, 3).permute(2, 0, 1), images[0, :, 0:2, 2:4])
    mask = random_patch_mask(5, 16, 0.4, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (5, 16) and (mask.sum(dim=1) == 6).all()


def test_mim_loss_decreases_and_trains_only_the_vision_side(model, pairs):
    torch.manual_seed(0)
    trainable = set(set_stage_trainable(model, "mim"))
    assert any(".experts.image." in n for n in trainable) and any(".attention." in n for n in trainable)
    assert not any(".experts.text." in n or ".experts.vl." in n or n.startswith(("text_embeddings", "heads"))
                   for n in trainable)
    task = MimTask(32, 8, mask_ratio=0.4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # smooth images (upsampled 4x4 noise): a masked patch's pixels follow from its neighbours
    coarse = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    batch = _batch(pairs) | {"images": torch.nn.functional.interpolate(coarse, size=32, mode="bilinear")}
    _, losses = _train(model, task, batch, steps=30, lr=3e-3, weight_decay=0.1, same_masks=True)
    assert losses[-1] < 0.5 * losses[0]
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) == (n not in trainable), n


def test_text_stage_freezing_is_real_even_with_weight_decay(model, pairs):
    images, ids, mask = pairs
    trainable = set(set_stage_trainable(model, "text"))
    assert trainable == {n for n, _ in model.named_parameters()
                         if n.startswith(("text_embeddings.", "heads.mlm.")) or ".experts.text." in n}
    task = TextMlmTask(100, 99, (0, 1, 2))
    model.eval()
    image_before = model.encode_image(images).detach()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt, losses = _train(model, task, _batch(pairs), steps=5, weight_decay=0.5)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for n, p in model.named_parameters()
                                                                      if n in trainable}
    for n, p in model.named_parameters():
        if n in trainable:
            assert p.requires_grad
        else:
            assert not p.requires_grad and p.grad is None and torch.equal(p, before[n]), n
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if ".experts.text." in n)
    # the image-only function is untouched by the text stage
    assert torch.equal(model.encode_image(images), image_before)


def test_vl_stage_is_the_coarse_task_and_trains_everything(model, pairs):
    set_stage_trainable(model, "text")
    assert len(set_stage_trainable(model, "vl")) == len(list(model.parameters()))
    task = CoarsePretrainTask(CoarseObjectives(), 32, 100, 99, (0, 1, 2))
    logs = task.training_step(model, _batch(pairs))
    assert {"itc", "itm", "mlm", "loss"} <= set(logs) and torch.isfinite(logs["loss"])
    logs["loss"].backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if ".experts." in n)


# ---- recipes and tasks ---------------------------------------------------------------------

def test_vqa_and_nlvr2_steps_with_a_vlmo_model(shapes_tiny):
    ds = ShapesDataset(shapes_tiny)
    tok = Tokenizer.from_pretrained(ds.tokenizer_dir)
    vocab = AnswerVocabulary.build(ds.vqa("train"), max_size=5)
    torch.manual_seed(0)
    model = VlmoModel(fit_to_tokenizer(micro_vlmo(vqa_num_answers=len(vocab)), tok))
    items = [ProcessedDataset(ds.vqa("train"), Processor(eval_transforms(32)))[i] for i in range(4)]
    _, losses = _train(model, VqaTask(), VqaCollator(tok, 16, vocab)(items), steps=8, lr=2e-3)
    assert losses[-1] < losses[0]
    items = [ProcessedDataset(ds.nlvr2("train"), Processor(eval_transforms(32)))[i] for i in range(4)]
    _, losses = _train(model, Nlvr2Task(), Nlvr2Collator(tok, 16)(items), steps=8, lr=2e-3)
    assert losses[-1] < losses[0]


def test_vlmo_pretrain_without_stage_steps_names_them(tmp_path, capsys):
    """train.max_steps alone, as for the other pre-training commands, is a clear error naming the
    stage keys (the stages have their own step counts), before any data is read."""
    from fibervl.cli import main

    assert main(["pretrain", "vlmo", "train.max_steps=2", f"train.run_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert "stages.mim_steps=N stages.text_steps=N stages.vl_steps=N" in err and "train.max_steps is not used" in err


def test_vlmo_pretrain_recipe_then_finetune_recipes(shapes_tiny, tmp_path, capsys):
    from fibervl.cli import main

    run = tmp_path / "pre"
    preset = tmp_path / "preset"
    preset.mkdir()
    micro_vlmo(heads=("itc", "itm", "mlm")).save(preset / "config.json")
    args = ["pretrain", "vlmo", "--config", "configs/vlmo-tiny_pretrain_shapes.yaml", f"data.root={shapes_tiny}",
            f"model.preset={preset}", f"train.run_dir={run}", "train.batch_size=4", "train.progress_bar=false",
            "train.ckpt_every=null", "train.eval_every=null", "train.precision=fp32", "data.num_eval=8",
            "stages.mim_steps=2", "stages.text_steps=2", "stages.vl_steps=2"]
    assert main(args) == 0
    assert "i2t_r1=" in capsys.readouterr().out
    for stage in ("mim", "text", "vl"):
        assert (run / stage / "model" / "model.safetensors").is_file()
    text_model = create_model(run / "text" / "model")
    mim_model = create_model(run / "mim" / "model")
    for n, p in mim_model.named_parameters():  # the text stage moved only text-side weights
        if not (n.startswith(("text_embeddings.", "heads.mlm.")) or ".experts.text." in n):
            assert torch.equal(text_model.state_dict()[n], p), n
    final = create_model(run / "model")
    assert all(p.requires_grad for p in final.parameters())
    assert json.loads((run / "metrics.json").read_text())["images"] == 8
    # a second call with --resume finds every stage done and only re-evaluates
    assert main(args + ["--resume"]) == 0

    common = [f"data.root={shapes_tiny}", f"--init={run}", "train.batch_size=4", "train.progress_bar=false",
              "train.ckpt_every=null", "train.max_steps=1", "data.num_eval=4", "train.precision=fp32",
              "train.optim.lr_multipliers={heads: 33, poolers: 33}"]  # the configs name FIBER's groups
    for recipe, extra in (("vqa", []), ("nlvr2", []), ("retrieval", ["eval.rerank_k=2"])):
        out = tmp_path / recipe
        assert main(["finetune", recipe, "--config", f"configs/fiber-tiny_{recipe}_shapes.yaml", *common,
                     f"--run-dir={out}", *extra]) == 0, recipe
        assert isinstance(create_model(out / "model"), VlmoModel)


@torch.no_grad()
def test_prefixes_stand_for_the_embeddings(model, pairs):
    """VLMo's prefixes are its embeddings (the fused sequence attends across modalities from
    block 0): every mode given them equals the mode run from the inputs."""
    images, ids, mask = pairs
    model.eval()
    image_prefix, text_prefix = model.image_prefix(images), model.text_prefix(ids, mask)
    torch.testing.assert_close(model.encode_image(image_prefix=image_prefix), model.encode_image(images), rtol=0, atol=0)
    torch.testing.assert_close(model.encode_text(ids, mask, text_prefix=text_prefix), model.encode_text(ids, mask),
                               rtol=0, atol=0)
    shared = model.fuse(None, None, mask, image_prefix=image_prefix, text_prefix=text_prefix)
    torch.testing.assert_close(shared.cls_feats, model.fuse(images, ids, mask).cls_feats, rtol=0, atol=0)

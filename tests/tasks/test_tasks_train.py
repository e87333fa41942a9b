"""VQA / NLVR2 / retrieval tasks on the tiny shapes set with a micro model: losses fall, heads are
rebuilt for a new answer vocabulary, predictions are well formed, and the CLI runs end to end."""

from __future__ import annotations

import json

import pytest
import torch

from fibervl.cli import main
from fibervl.data import AnswerVocabulary, Nlvr2Collator, ProcessedDataset, Processor, Tokenizer, VqaCollator
from fibervl.data.shapes import ShapesDataset
from fibervl.data.transforms import eval_transforms
from fibervl.experiment import ModelSpec
from fibervl.modeling.fiber import FiberModel
from fibervl.errors import CheckpointError
from fibervl.tasks.nlvr2 import Nlvr2Task
from fibervl.tasks.retrieval import ITM_WEIGHTS
from fibervl.tasks.vqa import VqaTask, vocabulary_coverage
from fibervl.modeling.factory import fit_to_tokenizer
from fibervl.predict.card import card_of
from fibervl.testing.training import train_losses
from fibervl.testing.configs import micro_config


def _micro_for(tokenizer: Tokenizer, **changes) -> FiberModel:
    cfg = micro_config()
    torch.manual_seed(0)
    return FiberModel(fit_to_tokenizer(cfg, tokenizer).replace(**changes))


def test_vqa_loss_falls_and_counts_out_of_vocabulary(shapes_tiny):
    ds = ShapesDataset(shapes_tiny)
    tok = Tokenizer.from_pretrained(ds.tokenizer_dir)
    reader = ds.vqa("train")
    vocab = AnswerVocabulary.build(reader, max_size=5)  # small on purpose: some answers fall outside
    coverage = vocabulary_coverage(reader, vocab)
    assert coverage["questions_without_vocab_answer"] > 0 and coverage["answers_outside_vocab_pct"] > 0
    model = _micro_for(tok, vqa_num_answers=len(vocab))
    items = [ProcessedDataset(reader, Processor(eval_transforms(64)))[i] for i in range(8)]
    batch = VqaCollator(tok, 16, vocab)(items)
    assert batch["targets"].shape == (8, 5)
    first = VqaTask().training_step(model, batch)
    assert 0 <= first["oov"] <= 1 and first["oov"] == 1 - batch["in_vocab"].float().mean()
    losses = train_losses(model, VqaTask(), batch, steps=45)
    assert losses[-1] < 0.6 * losses[0]


def test_nlvr2_loss_falls(shapes_tiny):
    ds = ShapesDataset(shapes_tiny)
    tok = Tokenizer.from_pretrained(ds.tokenizer_dir)
    items = [ProcessedDataset(ds.nlvr2("train"), Processor(eval_transforms(64)))[i] for i in range(8)]
    batch = Nlvr2Collator(tok, 16)(items)
    assert batch["images2"].shape == batch["images"].shape and batch["labels"].shape == (8,)
    losses = train_losses(_micro_for(tok), Nlvr2Task(), batch, steps=15)
    assert losses[-1] < 0.5 * losses[0]


def _task_model(init, tok, answers: int):
    """(model, new weight names) of a VQA task started from ``init`` with a fresh VQA head."""
    model, report = ModelSpec(init=str(init)).build(tok, new_heads=("vqa",), config_changes={"vqa_num_answers": answers},
                                                     with_report=True)
    return model, report.new


def test_task_model_rebuilds_the_vqa_head_and_reports_new_weights(shapes_tiny, tmp_path):
    tok = Tokenizer.from_pretrained(ShapesDataset(shapes_tiny).tokenizer_dir)
    base = _micro_for(tok, heads=("itc", "itm", "mlm"))
    base.save_pretrained(tmp_path / "run" / "model")
    model, new = _task_model(tmp_path / "run", tok, 11)
    assert model.config.vqa_num_answers == 11 and "vqa" in model.config.heads
    assert new and all(k.startswith("heads.vqa.") for k in new)
    for k, v in base.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # A head of another size in the init is replaced, not loaded.
    model.save_pretrained(tmp_path / "vqa11")
    model2, new2 = _task_model(tmp_path / "vqa11", tok, 3)
    assert model2.heads.vqa[-1].out_features == 3 and new2 == new
    # Anything else missing from the file is an error naming the file.
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("heads.itm.")}
    from safetensors.torch import save_file
    save_file(state, str(tmp_path / "vqa11" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="heads.itm"):
        _task_model(tmp_path / "vqa11", tok, 3)


def test_fresh_weights_depend_on_the_model_seed_only(shapes_tiny, tmp_path):
    """Two runs of one config start from the same weights (the process's own seed differs from
    run to run), a new head included; another ``model.seed`` gives others; building a fresh
    model leaves the global random stream as it was."""
    tok = Tokenizer.from_pretrained(ShapesDataset(shapes_tiny).tokenizer_dir)
    preset = tmp_path / "micro"
    preset.mkdir()
    micro_config().save(preset / "config.json")
    spec = ModelSpec(preset=str(preset))

    def weights(spec, **kw):
        torch.manual_seed(torch.randint(0, 2**31, (1,)).item() + 1)  # a different global state each call
        before = torch.get_rng_state()
        model = spec.build(tok, **kw)
        assert spec.init or torch.equal(torch.get_rng_state(), before)
        return model.state_dict()

    a, b, other = weights(spec), weights(spec), weights(ModelSpec(preset=str(preset), seed=1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], other[k]) for k in a if a[k].is_floating_point() and a[k].std() > 0)
    spec.build(tok).save_pretrained(tmp_path / "base")
    init = ModelSpec(init=str(tmp_path / "base"))
    h1, h2 = (weights(init, new_heads=("vqa",), config_changes={"vqa_num_answers": 5}) for _ in range(2))
    assert all(torch.equal(h1[k], h2[k]) for k in h1 if k.startswith("heads.vqa."))


def _common(shapes_tiny, run_dir):
    # The micro architecture as the "preset" (a directory with config.json): fast on CPU.
    preset = run_dir.parent / "micro_preset"
    preset.mkdir(exist_ok=True)
    micro_config().save(preset / "config.json")
    return [f"data.root={shapes_tiny}", f"--run-dir={run_dir}", f"model.preset={preset}", "train.batch_size=4", "train.progress_bar=false",
            "train.ckpt_every=null", "train.max_steps=2", "data.num_eval=8", "train.precision=fp32"]


def test_cli_vqa_finetune_evaluate_predict(shapes_tiny, tmp_path, capsys):
    run = tmp_path / "vqa"
    assert main(["finetune", "vqa", "--config", "configs/fiber-tiny_vqa_shapes.yaml", *_common(shapes_tiny, run)]) == 0
    model_dir = run / "model"
    answers = json.loads((model_dir / "answers.json").read_text())
    assert FiberModel.from_pretrained(model_dir).config.vqa_num_answers == len(answers)
    assert (model_dir / "tokenizer" / "tokenizer.json").is_file()
    capsys.readouterr()
    results = tmp_path / "results.json"
    assert main(["evaluate", "vqa", "--model", str(run), "--data-root", str(shapes_tiny), "--split", "test",
                 "data.num_eval=5", f"--results={results}"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["questions"] == 5 and 0 <= metrics["vqa_acc"] <= 100
    rows = json.loads(results.read_text())
    assert len(rows) == 5 and all(isinstance(r["question_id"], int) and r["answer"] in answers for r in rows)
    sample = ShapesDataset(shapes_tiny).vqa("test")[0]
    assert main(["predict", "vqa", "--model", str(model_dir), "--image", str(sample.image_path),
                 "--question", sample.text, "--out", str(tmp_path / "predict")]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert pred["answer"] in answers and len(pred["top"]) == 5
    assert pred["top"][0]["answer"] == pred["answer"] and all(0 <= t["score"] <= 1 for t in pred["top"])


def test_cli_nlvr2_and_retrieval(shapes_tiny, tmp_path, capsys):
    run = tmp_path / "nlvr2"
    assert main(["finetune", "nlvr2", "--config", "configs/fiber-tiny_nlvr2_shapes.yaml", *_common(shapes_tiny, run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "nlvr2", "--model", str(run / "model"), "--data-root", str(shapes_tiny), "data.num_eval=4"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["items"] == 4
    s = ShapesDataset(shapes_tiny).nlvr2("val")[0]
    assert main(["predict", "nlvr2", "--model", str(run / "model"), "--left", str(s.image_path),
                 "--right", str(s.image2_path), "--text", s.text, "--out", str(tmp_path / "predict")]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert isinstance(pred["answer"], bool) and 0 <= pred["p_true"] <= 1

    run = tmp_path / "retrieval"
    assert main(["finetune", "retrieval", "--config", "configs/fiber-tiny_retrieval_shapes.yaml",
                 *_common(shapes_tiny, run), "eval.rerank_k=3", "eval.itm_weight_split=val",
                 "data.eval_split=test"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"itc_rsum", "rerank_rsum", "rerank_i2t_r1", "rerank_t2i_r10"} <= set(metrics)
    # the re-ranking weight is chosen on val, used for the eval split and kept in the model's card
    sweep = {float(k.split("/")[-1]): v for k, v in metrics.items() if k.startswith("val/itm_weight_sweep/")}
    assert sorted(sweep) == sorted(ITM_WEIGHTS)
    weight = card_of(run / "model").itm_weight
    assert weight == metrics["rerank_itm_weight"] and sweep[weight] == max(sweep.values())
    capsys.readouterr()
    assert main(["evaluate", "retrieval", "--model", str(run / "model"), "--data-root", str(shapes_tiny),
                 "--split", "val", "--rerank-k", "3", "data.num_eval=8", "train.precision=fp32"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["rerank_itm_weight"] == weight
    assert (evaluated["rerank_i2t_r1"] + evaluated["rerank_t2i_r1"]) / 2 == pytest.approx(sweep[weight])
    assert main(["evaluate", "retrieval", "--model", str(run / "model"), "--data-root", str(shapes_tiny),
                 "--rerank-k", "3", "--itm-weight", "0", "data.num_eval=8"]) == 0
    itc_order = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [itc_order[f"rerank_{d}_r1"] for d in ("i2t", "t2i")] == [itc_order[f"itc_{d}_r1"] for d in ("i2t", "t2i")]
    assert main(["finetune", "retrieval", "--config", "configs/fiber-tiny_retrieval_shapes.yaml",
                 *_common(shapes_tiny, tmp_path / "both"), "eval.itm_weight=0.1", "eval.itm_weight_split=val"]) == 1
    assert "not both" in capsys.readouterr().err
    assert main(["finetune", "retrieval", "--config", "configs/fiber-tiny_retrieval_shapes.yaml",
                 *_common(shapes_tiny, tmp_path / "same"), "eval.itm_weight_split=val", "data.eval_split=val"]) == 1
    assert "flatters the recall" in capsys.readouterr().err
    paths, texts, _, _ = ShapesDataset(shapes_tiny).captions("val").retrieval_lists()
    assert main(["predict", "retrieval", "--model", str(run / "model"), "--image", str(paths[0]),
                 "--texts", ",".join(texts[:3]), "--out", str(tmp_path / "predict")]) == 0
    ranked = json.loads(capsys.readouterr().out)["ranking"]
    assert sorted(r["item"] for r in ranked) == sorted(texts[:3])
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)


def test_cli_vqa_on_a_vqav2_layout_directory(shapes_tiny, tmp_path, capsys):
    """Any directory in the VQAv2 layout works: mscoco file names, a custom image template, --init."""
    import shutil

    ds = ShapesDataset(shapes_tiny)
    tok = Tokenizer.from_pretrained(ds.tokenizer_dir)
    root = tmp_path / "vqav2"
    (root / "pics").mkdir(parents=True)
    for split, subtype in (("train", "train2014"), ("val", "val2014")):
        reader = ds.vqa(split)
        qs = json.loads(reader.questions_file.read_text())
        anns = json.loads(reader.annotations_file.read_text())
        qs["questions"] = qs["questions"][:12]
        keep = {q["question_id"] for q in qs["questions"]}
        anns["annotations"] = [a for a in anns["annotations"] if a["question_id"] in keep]
        (root / f"v2_OpenEnded_mscoco_{subtype}_questions.json").write_text(json.dumps(qs))
        (root / f"v2_mscoco_{subtype}_annotations.json").write_text(json.dumps(anns))
        for s in reader.samples[:12]:
            shutil.copy(s.image_path, root / "pics" / f"{subtype}-{s.image_id}.jpg")
    init = tmp_path / "init"
    _micro_for(tok).save_pretrained(init)
    run = tmp_path / "run"
    args = ["finetune", "vqa", "--init", str(init), "--data-root", str(root), "--image-template",
            "pics/{split}-{image_id}.jpg", "data.source=mscoco", "data.train_split=train2014",
            "data.eval_split=val2014", f"data.tokenizer={ds.tokenizer_dir}", f"--run-dir={run}", "train.batch_size=4",
            "train.max_steps=2", "train.progress_bar=false", "train.ckpt_every=null"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "new weights" in out and "heads.vqa." in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["questions"] == 12 and metrics["eval_split"] == "val2014"
    # A wrong template names the missing image file.
    assert main(args[:7] + ["pics/{split}/{image_id}.png"] + args[8:] + [f"--run-dir={tmp_path / 'bad'}"]) == 1
    assert "pics/train2014/" in capsys.readouterr().err


def test_cli_finetune_with_a_frozen_prefix_trains_only_the_fused_top(shapes_tiny, tmp_path):
    """``model.freeze_prefix=true`` (what the main job's VQA and NLVR2 stages use): the weights
    below the first fused block leave training bit-identical, the fused blocks and head move."""
    base = tmp_path / "base"
    assert main(["finetune", "vqa", "--config", "configs/fiber-tiny_vqa_shapes.yaml", *_common(shapes_tiny, base)]) == 0
    frozen = tmp_path / "frozen"
    args = [a for a in _common(shapes_tiny, frozen) if not a.startswith("model.preset=")]
    assert main(["finetune", "vqa", "--config", "configs/fiber-tiny_vqa_shapes.yaml", "--init", str(base / "model"),
                 "model.freeze_prefix=true", "train.optim.lr=1e-3", *args]) == 0
    before, after = (FiberModel.from_pretrained(d / "model") for d in (base, frozen))
    prefix = {id(p) for m in after.prefix_modules() for p in m.parameters()}
    old = dict(before.named_parameters())
    moved = {n for n, p in after.named_parameters() if not torch.equal(p, old[n])}
    assert moved and not any(id(after.get_parameter(n)) in prefix for n in moved)
    assert any(n.startswith("heads.vqa.") for n in moved) and any(".t2i." in n or ".i2t." in n for n in moved)

"""``fibervl convert``: official checkpoints and uni-modal backbones -> a fibervl model directory."""

from __future__ import annotations

import argparse


def add_convert_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "convert", help="convert checkpoints to a fibervl model directory",
        description="Convert a checkpoint into DST (config.json + model.safetensors), loadable with "
                    "FiberModel.from_pretrained(DST). Every source key is mapped or dropped for a stated reason.",
    )
    p.add_argument("kind", choices=["official-coarse", "official-fine", "roberta", "swin"],
                   help="official-coarse: FIBER coarse Lightning .ckpt; official-fine: FIBER fine-grained detector "
                        "checkpoint ({'model': ...}); roberta: Hugging Face RoBERTa weights "
                        "(file or directory) into the text encoder; swin: Microsoft Swin ImageNet checkpoint into "
                        "the image encoder")
    p.add_argument("src", help="source checkpoint file (or directory for roberta)")
    p.add_argument("dst", help="output directory")
    p.add_argument("--image-size", type=int, default=384,
                   help="official-coarse: image size the converted model runs at (window = size/32; the "
                        "relative-position tables are resized bicubically if needed). Default 384")
    p.add_argument("--text-head-dim", type=int, default=64,
                   help="official-coarse: width of one text attention head (not stored in checkpoints; "
                        "RoBERTa's is 64). Default 64")
    p.add_argument("--preset", default="fiber-base",
                   help="roberta/swin: the fibervl preset (or model directory) to initialise. Default fiber-base")
    p.add_argument("--init", default=None,
                   help="roberta/swin: start from this model directory instead of a fresh preset "
                        "(e.g. apply swin after roberta)")
    p.add_argument("--vqa-answers", nargs="+", metavar="FILE", default=None,
                   help="official-coarse of a VQA fine-tuned checkpoint: the VQAv2 annotation files the official "
                        "answer list is rebuilt from, in the official order (v2_mscoco_train2014_annotations.json "
                        "v2_mscoco_val2014_annotations.json), or one saved list (JSON list or {answer: index}); "
                        "written to DST/answers.json for fibervl evaluate|predict vqa")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="official-coarse/official-fine: the RoBERTa tokenizer directory (vocab.json + merges.txt, or "
                        "tokenizer.json), saved into DST/tokenizer so that DST is self-contained")
    return p


def run_convert(args: argparse.Namespace) -> int:
    from ..modeling.factory import create_model

    if args.vqa_answers and args.kind != "official-coarse":
        raise ValueError("--vqa-answers is for official-coarse (a VQA fine-tuned checkpoint)")
    if args.tokenizer and args.kind not in ("official-coarse", "official-fine"):
        raise ValueError("--tokenizer is for official-coarse and official-fine")
    if args.kind in ("official-coarse", "official-fine"):
        from .official_vqa import answer_list_from_files, check_vqa_files, write_vqa_files

        # Read the extra files first: a bad one fails before anything is written.
        answers = answer_list_from_files(args.vqa_answers) if args.vqa_answers else None
        options = {"image_size": args.image_size, "text_head_dim": args.text_head_dim} if args.kind == "official-coarse" else {}
        model, report = create_model(f"{args.kind}:{args.src}", convert_options=options, with_report=True)
        dropped = report.dropped
        tokenizer = check_vqa_files(model, answers, args.tokenizer)
        model.save_pretrained(args.dst)
        write_vqa_files(args.dst, answers, tokenizer)
        print(f"converted {args.src} -> {args.dst}")
        if answers is not None:
            print(f"  wrote {len(answers)} answers in the classifier's row order to {args.dst}/answers.json")
        if args.tokenizer:
            print(f"  saved the tokenizer of {args.tokenizer} to {args.dst}/tokenizer")
        _print_dropped(dropped)
        return 0

    from .unimodal import load_roberta, load_swin

    # a fresh preset draws from the process's stream, as it always has (seed=None)
    model = create_model(args.init or args.preset, seed=None, family="fiber")
    load = load_roberta if args.kind == "roberta" else load_swin
    left, dropped = load(model, args.src)
    model.save_pretrained(args.dst)
    print(f"loaded {args.kind} weights from {args.src} into {model.config.name}; saved {args.dst}")
    _print_dropped(dropped)
    if left:
        print(f"{len(left)} weights of that backbone keep their initialisation (fusion modules): "
              + ", ".join(left[:4]) + (" ..." if len(left) > 4 else ""))
    return 0


def _print_dropped(dropped: dict[str, str]) -> None:
    by_reason: dict[str, list[str]] = {}
    for key, reason in dropped.items():
        by_reason.setdefault(reason, []).append(key)
    for reason, keys in by_reason.items():
        print(f"  dropped {len(keys)} key(s), {reason}: {keys[0]}" + (" ..." if len(keys) > 1 else ""))

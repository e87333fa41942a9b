"""``fibervl export onnx``: a model's dual encoders and grounding detector -> ONNX graphs."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import FILE_NAMES, PARTS


def add_export_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export", help="export a model's encoders and detector to ONNX (fibervl export onnx -h)",
        description="Export the parts of a FIBER model as ONNX graphs with a dynamic batch axis (and text "
                    "length), then check each against PyTorch in onnxruntime. Without --part every part the "
                    "model has goes to a directory: image_encoder.onnx and text_encoder.onnx (dual encoder, "
                    "ITC head) and detector.onnx (fine-grained models). See docs/export.md.",
    )
    p.add_argument("format", choices=["onnx"], help="the format (onnx)")
    p.add_argument("--model", required=True,
                   help="a model directory (config.json + model.safetensors, or a run directory with model/), "
                        "or a preset name such as fiber-tiny (random weights: for trying the export)")
    p.add_argument("--part", choices=[*PARTS, "all"], default="all",
                   help="image: images -> ITC embedding; text: token ids + mask -> ITC embedding; detector: "
                        "images + token ids + mask -> boxes, token scores and centerness of every anchor "
                        "(before threshold and NMS). Default all: every part the model has")
    p.add_argument("--out", default=None,
                   help="a .onnx file when one part is exported, else a directory (files named as above). "
                        "Default: MODEL/onnx/ for a model directory, ./PRESET-onnx/ for a preset")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--image-size", type=int, default=None,
                   help="the fixed image side S of the graphs' [B, 3, S, S] input (default: the model's)")
    p.add_argument("--no-check", action="store_true", help="do not compare the graphs with PyTorch in onnxruntime")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="the largest absolute difference from PyTorch the check accepts (boxes: in units of "
                        "the image side S, i.e. pixels / S). Default 1e-4")
    return p


def run_export(args: argparse.Namespace) -> int:
    from .onnx import available_parts, check_onnx, check_part, export_onnx, require_onnx

    require_onnx(check=not args.no_check)  # before minutes of loading and tracing
    model, default_out = _load(args.model)
    parts = available_parts(model) if args.part == "all" else [args.part]
    if not parts:
        raise ValueError(f"{model.config.name} has neither a dual encoder ('itc' head) nor a detector to export")
    for part in parts:
        check_part(model, part)
    targets = _targets(parts, Path(args.out) if args.out else default_out)
    image_size = model.config.vision.image_size if args.image_size is None else args.image_size
    failed = []
    for part, path in targets.items():
        start = time.perf_counter()
        export_onnx(model, part, path, opset=args.opset, image_size=image_size)
        print(f"{part}: wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {time.perf_counter() - start:.1f} s)")
        if args.no_check:
            continue
        diffs = check_onnx(model, part, path, image_size=image_size)
        # Boxes are pixels: fp32 rounding alone is 6e-5 at 1000 px, so they are judged per image side.
        scaled = {k: v / image_size if k == "boxes" else v for k, v in diffs.items()}
        ok = max(scaled.values()) <= args.tolerance
        shown = ", ".join(f"{k} {v:.1e}" + (" px" if k == "boxes" else "") for k, v in diffs.items())
        print(f"  onnxruntime vs PyTorch, max abs diff at batch 1 and 3: {shown} -> {'ok' if ok else 'FAILED'}")
        if not ok:
            failed.append(part)
    if failed:
        print(f"fibervl export: {', '.join(failed)} differ from PyTorch by more than {args.tolerance:g}")
        return 1
    return 0


def _load(name_or_dir: str):
    """(FiberModel, default output directory) from a model or run directory, or a preset name."""
    import torch

    from ..config import PRESETS
    from ..modeling.factory import create_model, list_presets, read_model_config, resolve_model_dir

    if Path(name_or_dir).is_dir():
        directory = resolve_model_dir(name_or_dir)
        family = read_model_config(directory).family
        if family != "fiber":
            raise ValueError(f"{directory} holds a {family} model; ONNX export covers FIBER models")
        return create_model(directory), directory / "onnx"
    if name_or_dir in PRESETS:
        torch.manual_seed(0)  # the same random weights every time
        return create_model(name_or_dir, seed=None), Path(f"{name_or_dir}-onnx")
    if name_or_dir in list_presets():
        raise ValueError(f"{name_or_dir} is a {list_presets()[name_or_dir]} preset; ONNX export covers FIBER models "
                         f"({', '.join(sorted(PRESETS))})")
    raise ValueError(f"{name_or_dir!r} is neither a model directory nor a preset ({', '.join(sorted(PRESETS))})")


def _targets(parts: list[str], out: Path) -> dict[str, Path]:
    """part -> file: ``out`` itself when it names one .onnx file, else ``out/<FILE_NAMES[part]>``."""
    if out.suffix == ".onnx":
        if len(parts) > 1:
            raise ValueError(f"--out {out} names one file, but {len(parts)} parts are exported "
                             f"({', '.join(parts)}): give --part, or a directory")
        return {parts[0]: out}
    return {part: out / FILE_NAMES[part] for part in parts}

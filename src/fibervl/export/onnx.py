"""ONNX export of FIBER's dual encoders and its grounding detector.

Three graphs (``PARTS``), each with a dynamic batch axis ``B``; the text inputs also have a
dynamic length ``T`` (1 to the model's ``text.max_text_len``, the position table's limit):

- ``image``: ``images [B, 3, S, S]`` float32 -> ``embedding [B, H]``, the L2-normalised ITC
  embedding of :meth:`FiberModel.encode_image`;
- ``text``: ``input_ids [B, T]``, ``attention_mask [B, T]`` int64 -> ``embedding [B, H]``, that of
  :meth:`FiberModel.encode_text`. Image-text similarity is the dot product of the two (divide by
  the ``itc_temperature`` in the file's metadata for the training logits);
- ``detector``: ``images``, ``input_ids``, ``attention_mask`` -> for each of the ``A`` anchors of
  the five pyramid levels (finest first, row-major within a level, as the post-processor orders
  them): ``boxes [B, A, 4]`` (the box regression decoded against the anchors; xyxy in pixels of
  the ``S x S`` input, not clipped), ``token_scores [B, A, T]`` (sigmoid of the grounding
  logits) and ``centerness [B, A]`` (sigmoid). No threshold and no NMS: what the prompt's classes
  are is data, so turning token scores into detections stays outside (docs/export.md gives the
  recipe of :class:`~fibervl.modeling.detection.postprocess.GroundingPostProcessor`).

The image size ``S`` is fixed at export: Swin's padding, windows and shift masks are worked out
in Python from the grid size, so the traced graph holds them as constants. Images are pixels
normalised as the model's processors make them (``fibervl.data``), resized to ``S x S``.

The graphs are traced by the TorchScript-based exporter (``dynamo=False``). The torch.export-based
one (the default since torch 2.9) fails on the Swin window attention in torch 2.13: its
decomposition of ``scaled_dot_product_attention`` changes the output's strides, and a reshape it
had recorded as a view no longer applies.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..modeling.fiber import FiberModel
from . import PARTS

DEFAULT_OPSET = 17  # LayerNormalization is an ONNX op from 17 on; GridSample (DyHead) from 16
INSTALL_HINT = "pip install 'fibervl[export]'"


class ImageEncoderGraph(nn.Module):
    """``images [B, 3, S, S] -> embedding [B, H]`` (:meth:`FiberModel.encode_image`)."""

    def __init__(self, model: FiberModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)


class TextEncoderGraph(nn.Module):
    """``input_ids, attention_mask [B, T] -> embedding [B, H]`` (:meth:`FiberModel.encode_text`)."""

    def __init__(self, model: FiberModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids, attention_mask)


class DetectorGraph(nn.Module):
    """``images [B, 3, S, S], input_ids, attention_mask [B, T] -> (boxes [B, A, 4],
    token_scores [B, A, T], centerness [B, A])``: :meth:`FiberModel.detect` for every anchor,
    before the post-processor's threshold and NMS (see the module docstring)."""

    def __init__(self, model: FiberModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model.detect(images, input_ids, attention_mask)
        head = out.head
        b = images.shape[0]
        # Per level [B, 4, H_l, W_l] -> [B, H_l*W_l, 4], concatenated in the anchors' order.
        deltas = torch.cat([r.flatten(2) for r in head.bbox_reg], dim=2).transpose(1, 2)
        anchors = torch.cat(out.anchors)  # [A, 4], a constant for a fixed image size
        coder = self.model.detector.postprocessor.box_coder
        boxes = coder.decode(deltas.reshape(-1, 4), anchors.expand(b, -1, -1).reshape(-1, 4)).view(b, -1, 4)
        token_scores = torch.cat(head.dot_product_logits, dim=1).sigmoid()
        centerness = torch.cat([c.flatten(1) for c in head.centerness], dim=1).sigmoid()
        return boxes, token_scores, centerness


# part -> (graph, input names, output names)
GRAPHS = {
    "image": (ImageEncoderGraph, ("images",), ("embedding",)),
    "text": (TextEncoderGraph, ("input_ids", "attention_mask"), ("embedding",)),
    "detector": (DetectorGraph, ("images", "input_ids", "attention_mask"), ("boxes", "token_scores", "centerness")),
}
DYNAMIC_AXES = {
    "images": {0: "batch"}, "input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
    "embedding": {0: "batch"}, "boxes": {0: "batch"}, "token_scores": {0: "batch", 2: "tokens"},
    "centerness": {0: "batch"},
}


def require_onnx(check: bool = True) -> None:
    """Raise a RuntimeError naming the extra to install when ``onnx`` (exporting) or, with
    ``check``, ``onnxruntime`` (comparing the graph with PyTorch) is missing."""
    needed = ["onnx"] + (["onnxruntime"] if check else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise RuntimeError(f"ONNX export needs the {' and '.join(missing)} package"
                           f"{'s' if len(missing) > 1 else ''}: {INSTALL_HINT}")


def available_parts(model: FiberModel) -> list[str]:
    """The parts ``model`` can export: the encoders with an ITC head, the detector with one."""
    parts = ["image", "text"] if "itc" in model.config.heads else []
    return parts + (["detector"] if model.detector is not None else [])


def check_part(model: FiberModel, part: str) -> None:
    """A ValueError for an unknown part or one the model was built without."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; parts: {', '.join(PARTS)}")
    if part in available_parts(model):
        return
    has = ", ".join(available_parts(model)) or "nothing"
    name = model.config.name
    if part == "detector":
        raise ValueError(f"{name} has no detector (config.detection is None), so it exports {has}; "
                         "a fine-grained model (e.g. fiber-tiny-fine) has one")
    raise ValueError(f"{name} has no dual encoder ('itc' is not in config.heads), so it exports {has}")


def check_image_size(model: FiberModel, image_size: int) -> None:
    """The size must give whole grids at every stage, as ``FiberConfig.validate`` demands of the
    config's own size (the detector's levels must halve exactly)."""
    v = model.config.vision
    multiple = v.stage_strides()[-1]
    if image_size <= 0 or image_size % multiple:
        raise ValueError(f"image size {image_size} must be a positive multiple of {multiple} for {model.config.name}")


def max_tokens(model: FiberModel, part: str) -> int:
    """The longest text the part takes (the detector's query length, else the text length)."""
    if part == "detector":
        return min(model.config.detection.max_query_len, model.config.text.max_text_len)
    return model.config.text.max_text_len


def example_inputs(model: FiberModel, part: str, batch: int, tokens: int, image_size: int,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of ``part`` in the order of its graph: images ``[batch, 3, S, S]``; token ids
    ``[batch, tokens]`` (BOS, random ids, EOS) whose last row is padded to half its length (when
    ``batch > 1``), so the masks are exercised; its attention mask."""
    g = torch.Generator().manual_seed(seed)
    t = model.config.text
    images = torch.randn(batch, 3, image_size, image_size, generator=g)
    ids = torch.randint(4, t.vocab_size - 1, (batch, tokens), generator=g)
    ids[:, 0] = t.bos_token_id
    ids[:, -1] = t.eos_token_id
    mask = torch.ones_like(ids)
    if batch > 1 and tokens > 2:
        real = max(2, tokens // 2)
        ids[-1, real - 1] = t.eos_token_id
        ids[-1, real:] = t.pad_token_id
        mask[-1, real:] = 0
    text = (ids, mask)
    return {"image": (images,), "text": text, "detector": (images, *text)}[part]


def export_onnx(model: FiberModel, part: str, path: str | Path, opset: int = DEFAULT_OPSET,
                image_size: int | None = None) -> Path:
    """Write ``part`` of ``model`` as an ONNX graph to ``path``, with the dynamic axes of the
    module docstring and fibervl metadata; returns the path. ``model`` is put in eval mode, in
    fp32, on the CPU. ``image_size``: the ``S`` of the graph (default: the config's)."""
    require_onnx(check=False)
    import onnx

    check_part(model, part)
    image_size = model.config.vision.image_size if image_size is None else image_size
    check_image_size(model, image_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph_cls, input_names, output_names = GRAPHS[part]
    # The wrapper in eval mode too: the exporter restores the wrapper's mode afterwards, and a
    # fresh module is in training mode, which would switch the model's dropout on.
    graph = graph_cls(model.float().cpu()).eval()
    # Batch 2 with a padded row and 8 tokens: neither 1 nor the longest, so a size the trace
    # wrongly kept as a constant shows up in check_onnx at other sizes.
    args = example_inputs(model, part, 2, min(8, max_tokens(model, part)), image_size)
    with warnings.catch_warnings(), torch.no_grad():
        # Expected: every Python branch on the image grid is a constant (the size is fixed), and
        # torch says the TorchScript exporter is deprecated (see the module docstring).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        torch.onnx.export(
            graph, args, str(path), dynamo=False, opset_version=opset, input_names=list(input_names),
            output_names=list(output_names), dynamic_axes={n: DYNAMIC_AXES[n] for n in input_names + output_names},
        )
    proto = onnx.load(str(path))
    for key, value in _metadata(model, part, image_size, opset).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def _metadata(model: FiberModel, part: str, image_size: int, opset: int) -> dict[str, object]:
    cfg = model.config
    meta: dict[str, object] = {"fibervl.version": __version__, "fibervl.model": cfg.name, "fibervl.part": part,
                               "fibervl.opset": opset}
    if part in ("image", "detector"):
        meta["fibervl.image_size"] = image_size
    if part in ("text", "detector"):
        meta.update({"fibervl.max_tokens": max_tokens(model, part), "fibervl.pad_token_id": cfg.text.pad_token_id})
    if part in ("image", "text"):
        meta.update({"fibervl.embedding_dim": cfg.hidden_size, "fibervl.itc_temperature": float(model.temperature.detach())})
    return meta


def check_onnx(model: FiberModel, part: str, path: str | Path, image_size: int | None = None,
               cases: tuple[tuple[int, int], ...] | None = None) -> dict[str, float]:
    """Run the ONNX graph at ``path`` with onnxruntime (CPU) and ``model`` in PyTorch (fp32) on the
    same random inputs for each ``(batch, tokens)`` of ``cases``; returns each output's largest
    absolute difference over all cases. The default cases are batch 1 with 3 tokens and batch 3
    with the longest text, other sizes than the export's, which checks the dynamic axes."""
    require_onnx()
    import onnxruntime as ort

    check_part(model, part)
    image_size = model.config.vision.image_size if image_size is None else image_size
    cases = cases or ((1, 3), (3, max_tokens(model, part)))
    graph_cls, input_names, output_names = GRAPHS[part]
    graph = graph_cls(model.float().cpu()).eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = dict.fromkeys(output_names, 0.0)
    for k, (batch, tokens) in enumerate(cases):
        args = example_inputs(model, part, batch, tokens, image_size, seed=1 + k)
        with torch.no_grad():
            expected = graph(*args)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = session.run(list(output_names), {n: a.numpy() for n, a in zip(input_names, args)})
        for name, ref, out in zip(output_names, expected, got):
            if out.shape != tuple(ref.shape):
                raise RuntimeError(f"{path}: output {name} has shape {out.shape} at batch {batch}, {tokens} tokens; "
                                   f"PyTorch gives {tuple(ref.shape)}")
            diffs[name] = max(diffs[name], float(np.abs(out - ref.numpy()).max()))
    return diffs

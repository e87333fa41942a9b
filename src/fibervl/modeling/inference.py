"""A FiberModel prepared for inference only: eval mode, no gradients, weights kept in the
inference dtype, and (optionally) its forward methods compiled with frozen weights.

    model = optimize_for_inference(FiberModel.from_pretrained(DIR), dtype=torch.bfloat16)
    out = model.fuse(images, ids, mask)   # images may stay fp32: floating inputs are cast

Why: casting fp32 weights to bf16 on every call (autocast) costs time that bf16 weights do not,
and ``torch.compile`` with ``freezing`` treats the weights as constants, which lets inductor fuse
the element-wise work (GELU, LayerNorm, residual adds, window copies) into fewer kernels
(``BENCHMARKS.md``, "forward"). The price: the first call of each method at each new input shape
compiles (about 45 s for fiber-tiny and 100-130 s for fiber-base on 2 cores; less when
inductor's on-disk cache already holds the graph), so keep the batch size and the padded text
length fixed; and the model can no longer be trained (the compiled graphs hold the weights as
they were).
"""

from __future__ import annotations

import functools
import os
import shutil

import torch
from torch import nn

#: The methods compiled by default: the fusion encoder and both dual-encoder towers.
DEFAULT_METHODS = ("fuse", "encode_image", "encode_text")


def optimize_for_inference(
    model: nn.Module, *, dtype: torch.dtype | None = None, compile: bool = True,
    methods: tuple[str, ...] = DEFAULT_METHODS,
) -> nn.Module:
    """Prepare ``model`` (a FiberModel, or any module with the named methods) for inference, in
    place, and return it.

    - ``eval()`` and ``requires_grad_(False)``; every call of ``methods`` runs under ``no_grad``;
    - ``dtype`` (e.g. ``torch.bfloat16``): the weights are cast once, and floating-point tensor
      arguments of ``methods`` are cast to it at each call;
    - ``compile``: each of ``methods`` is replaced by ``torch.compile(..., freezing=True)``;
      compiling happens at the first call of each input shape. Needs a C++ compiler.

    Calling a method after ``model.train()`` raises: the frozen graphs would ignore any update.
    """
    for name in methods:
        if not callable(getattr(model, name, None)):
            raise ValueError(f"optimize_for_inference: {type(model).__name__} has no method {name!r}")
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"optimize_for_inference: dtype must be a floating-point type, got {dtype}")
    if compile:
        _require_cxx_compiler()
    # Every check above runs before the model is touched: a refused call leaves it as it was.
    model.eval().requires_grad_(False)
    if dtype is not None:
        model.to(dtype)
    for name in methods:
        method = getattr(model, name)
        if compile:
            method = torch.compile(method, options={"freezing": True}, dynamic=False)
        setattr(model, name, _inference_call(model, name, method, dtype))
    return model


def _inference_call(model: nn.Module, name: str, method, dtype: torch.dtype | None):
    @functools.wraps(method)
    def call(*args, **kwargs):
        if model.training:
            raise RuntimeError(
                f"{type(model).__name__}.{name}: this model was prepared by optimize_for_inference (frozen "
                "weights) and cannot be trained; load a fresh model to train")
        if dtype is not None:
            args = tuple(_cast(a, dtype) for a in args)
            kwargs = {k: _cast(v, dtype) for k, v in kwargs.items()}
        with torch.no_grad():
            return method(*args, **kwargs)
    return call


def _cast(value, dtype: torch.dtype):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    return value


def _require_cxx_compiler() -> None:
    """torch.compile on the CPU builds C++ kernels: fail here, clearly, rather than at the first call."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    if not any(shutil.which(c) for c in candidates):
        raise RuntimeError(
            "optimize_for_inference(compile=True) needs a C++ compiler for torch.compile "
            f"(looked for {', '.join(candidates)}); install one (e.g. apt install g++) or pass compile=False")

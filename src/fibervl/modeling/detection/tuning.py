"""What trains when a grounding detector is fine-tuned: the official FIBER / GLIP modes
(``SOLVER.TUNING_HIGHLEVEL_OVERRIDE``), in terms of the parts a model names
(:meth:`fibervl.modeling.fiber.FiberModel.parts`).

| mode | trains | the official switches |
| --- | --- | --- |
| ``full`` | everything | nothing frozen |
| ``linear_prob`` | the head's predictors (box, centerness, token projection, logit scale, biases; the location prior) | backbone, FPN,
  language frozen; ``LINEAR_PROB`` |
| ``language_prompt_v1`` | the text encoder (with its fusion) | backbone, FPN, head frozen |
| ``language_prompt_v2`` | the prompt offsets on the text embeddings | everything else frozen; ``ADD_LINEAR_LAYER`` |
| ``language_prompt_v3`` | the text encoder and the head's predictors | backbone, FPN frozen; ``LINEAR_PROB`` |
| ``language_prompt_v4`` | the head's predictors and the prompt offsets | backbone, FPN, language frozen; both |

The image backbone carries the image-side fusion (image queries attending to text) and the text
encoder the text-side fusion, as the official model's two backbones do.
"""

from __future__ import annotations

TRAINED_PARTS: dict[str, frozenset[str] | None] = {
    "full": None,  # every part
    "linear_prob": frozenset({"head_predictors"}),
    "language_prompt_v1": frozenset({"text"}),
    "language_prompt_v2": frozenset({"prompt"}),
    "language_prompt_v3": frozenset({"text", "head_predictors"}),
    "language_prompt_v4": frozenset({"head_predictors", "prompt"}),
}


def check_tuning_mode(mode: str) -> None:
    if mode not in TRAINED_PARTS:
        raise ValueError(f"unknown tuning mode {mode!r}; known: {', '.join(TRAINED_PARTS)}")


def needs_prompt(mode: str) -> bool:
    """Does ``mode`` train prompt offsets (so the model must have ``detection.prompt_tuning_tokens``)?"""
    check_tuning_mode(mode)
    return "prompt" in (TRAINED_PARTS[mode] or ())


def apply_tuning_mode(model, mode: str) -> int:
    """Freeze every part of ``model`` that ``mode`` does not train. Returns the parameters frozen."""
    check_tuning_mode(mode)
    trained = TRAINED_PARTS[mode]
    if trained is None:
        return 0
    if getattr(model, "detector", None) is None:
        raise ValueError(f"tuning mode {mode!r} is for grounding detectors; this model has no detection head")
    parts = model.parts()
    if "prompt" in trained and "prompt" not in parts:
        raise ValueError(f"tuning mode {mode!r} trains prompt offsets, but the model has none "
                         "(detection.prompt_tuning_tokens = 0)")
    return model.freeze(sorted(set(parts) - trained))

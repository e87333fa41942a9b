"""Parameter reports: where a model's weights are, and how its fusion count relates to the official one."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .modeling.fiber import FiberModel

# Official FIBER-B (coarse) fusion counts, from the official model's state_dict.
OFFICIAL_BASE_I2T = 12_607_494
OFFICIAL_BASE_T2I = 13_397_004


def _count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def parameter_breakdown(model: FiberModel) -> dict[str, int]:
    fusion = model.fusion_parameters()
    vision = _count(model.vision) - fusion["i2t"]
    text = _count(model.text) - fusion["t2i"]
    cross = _count(model.cross_modal) - fusion["caption_proj"]
    return {
        "vision backbone (no fusion)": vision,
        "text backbone (no fusion)": text,
        "fusion i2t (in Swin blocks)": fusion["i2t"],
        "fusion t2i (in text layers)": fusion["t2i"],
        "caption image projections": fusion["caption_proj"],
        "cross-modal transforms + poolers": cross,
        "heads + temperature": _count(model.heads) + (model.temperature.numel() if hasattr(model, "temperature") else 0),
        "total": _count(model),
    }


def _other_family_report(model: nn.Module) -> str:
    """Parameters per top-level module and in the fusion modules, for families other than FIBER."""
    cfg = model.config
    rows = {name: _count(child) for name, child in model.named_children()}
    rows.update({name: p.numel() for name, p in model.named_parameters(recurse=False)})  # e.g. temperature
    rows.update({f"fusion: {k}": v for k, v in model.fusion_parameters().items()})
    rows["total"] = _count(model)
    width = max(map(len, rows))
    lines = [f"{cfg.name} ({cfg.family}): image {cfg.vision.image_size}px, heads {list(cfg.heads)}", ""]
    return "\n".join(lines + [f"  {k:<{width}}  {v:>13,}" for k, v in rows.items()])


def parameter_report(name_or_dir: str) -> str:
    from .modeling.factory import create_model, list_presets

    if not Path(name_or_dir).is_dir() and name_or_dir not in list_presets():
        raise ValueError(f"{name_or_dir!r} is neither a model directory nor a preset ({', '.join(sorted(list_presets()))})")
    model = create_model(name_or_dir, seed=None)  # only counted: its weights may come from any stream
    if not isinstance(model, FiberModel):
        return _other_family_report(model)
    cfg = model.config
    rows = parameter_breakdown(model)
    lines = [f"{cfg.name}: image {cfg.vision.image_size}px, window {cfg.vision.resolved_window_size}, "
             f"fusion in the top {cfg.fusion.num_layers} blocks (Swin {cfg.fused_blocks()} <-> text layers "
             f"{cfg.fused_text_layers()}), heads {list(cfg.heads)}", ""]
    width = max(map(len, rows))
    lines += [f"  {k:<{width}}  {v:>13,}" for k, v in rows.items()]
    fusion = rows["fusion i2t (in Swin blocks)"] + rows["fusion t2i (in text layers)"]
    # The official text layers also hold weights that are never used: a LayerNorm inside every
    # t2i cross-attention (never applied) and alpha_t2i in every unfused text layer.
    unused_ln = 2 * cfg.text.hidden_size * cfg.fusion.num_layers
    unused_alpha = cfg.text.num_layers - cfg.fusion.num_layers
    official_t2i = rows["fusion t2i (in text layers)"] + unused_ln + unused_alpha
    lines += [
        "",
        f"  fusion parameters (i2t + t2i): {fusion:,} ({fusion / 1e6:.1f}M)",
        f"  the official layout would count t2i as {official_t2i:,}: + {unused_ln:,} parameters of the never-applied",
        f"  cross-attention output LayerNorms and + {unused_alpha} alpha_t2i of unfused layers, which fibervl does not build",
        f"  -> official-layout fusion total {rows['fusion i2t (in Swin blocks)'] + official_t2i:,}",
    ]
    if cfg.name in ("fiber-base", "fiber-base-official"):
        ok = rows["fusion i2t (in Swin blocks)"] == OFFICIAL_BASE_I2T and official_t2i == OFFICIAL_BASE_T2I
        lines.append(f"  official FIBER-B: i2t {OFFICIAL_BASE_I2T:,}, t2i {OFFICIAL_BASE_T2I:,} -> "
                     f"{'matches exactly' if ok else 'DOES NOT MATCH'}")
    return "\n".join(lines)

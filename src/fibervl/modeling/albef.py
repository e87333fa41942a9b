"""ALBEF ("Align before Fuse", Li et al., NeurIPS 2021): a ViT, a BERT-style text encoder whose
top ``fusion_layers`` layers add cross-attention to the image tokens, and the fibervl heads.

Unlike FIBER, fusion happens *after* the image encoder: the ViT never sees the text, and the
lower text layers never see the image. The three modes:

- dual encoder (:meth:`AlbefModel.encode_image`, :meth:`AlbefModel.encode_text`): the ViT CLS
  token and the output of the text-only layers, each projected to ``embed_dim`` and
  L2-normalised (ITC); no cross-attention runs;
- fusion encoder (:meth:`AlbefModel.fuse`): the text-only layers, then the fusion layers
  (self-attention -> cross-attention to all image tokens -> FFN, each post-norm with a
  residual, BERT's ``BertLayer`` with ``crossattention``);
- the pre-training task reuses the intermediate pieces (:meth:`image_tokens`,
  :meth:`text_hidden`, :meth:`fuse_features`) so the ViT and the text-only layers run once per
  example for ITC, ITM and MLM together, as the original does.

``FusionOutput.cls_feats`` [B, 2H] is the concatenation of the fused text state at the pooled
position (token 0, ALBEF's ``[CLS]``, or the mean over real tokens: ``text_pooling``) and the
ViT CLS token (mapped to H if the widths differ). No tanh pooler: ALBEF's ITM head reads the
fused CLS directly, and fibervl's ITM head ``Linear(2H, 2)`` over this concatenation contains
it (zero image weights give exactly ALBEF's head). See docs/models.md for the other differences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SerializableConfig, TextConfig
from ..errors import ConfigError
from .fiber import FusionOutput, _init_weights, _l2_normalise
from .heads import HeadLogits, Heads
from .layers import merge_heads, split_heads
from .text import SelfAttention, TextEmbeddings, TextLayer
from .vit import VisionTransformer, VitConfig

ALBEF_HEADS = frozenset({"itc", "itm", "mlm", "vqa", "nlvr2"})
FUSED_HEADS = frozenset({"itm", "mlm", "vqa", "nlvr2"})


@dataclass
class AlbefConfig(SerializableConfig):
    """A whole ALBEF model.

    ``text.num_layers`` counts all text layers; the top ``fusion_layers`` of them attend to the
    image (ALBEF-B: 12 = 6 text-only + 6 fusion). ``hidden_size`` must equal
    ``text.hidden_size`` (the fused text states feed the heads directly, as in ALBEF).
    ``embed_dim``: width of the ITC embeddings (ALBEF: 256). ``itc_temperature``: initial
    temperature (0.07), clamped to [0.001, 0.5] during pre-training as ALBEF does.
    """

    vision: VitConfig = field(default_factory=VitConfig)
    text: TextConfig = field(default_factory=TextConfig)
    fusion_layers: int = 6
    hidden_size: int = 768
    embed_dim: int = 256
    heads: tuple[str, ...] = ("itc", "itm", "mlm")
    vqa_num_answers: int = 3129
    head_layer_norm_eps: float = 1e-12
    mlm_layer_norm_eps: float = 1e-12
    itc_temperature: float = 0.07
    text_pooling: str = "first"
    name: str = "custom"
    family: str = "albef"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        v, t = self.vision, self.text
        if self.family != "albef":
            raise ConfigError(f"an AlbefConfig has family 'albef', got {self.family!r}")
        if v.width % v.num_heads or t.hidden_size % t.num_heads:
            raise ConfigError("vision.width and text.hidden_size must be divisible by their head counts")
        if v.image_size % v.patch_size:
            raise ConfigError(f"vision.image_size {v.image_size} is not a multiple of vision.patch_size {v.patch_size}")
        if not 0 <= self.fusion_layers <= t.num_layers:
            raise ConfigError(f"fusion_layers={self.fusion_layers} must lie in [0, text.num_layers={t.num_layers}]")
        if self.hidden_size != t.hidden_size:
            raise ConfigError(f"hidden_size {self.hidden_size} must equal text.hidden_size {t.hidden_size} "
                              "(ALBEF's heads read the fused text states directly)")
        unknown = set(self.heads) - ALBEF_HEADS
        if unknown:
            raise ConfigError(f"unknown heads {sorted(unknown)}; ALBEF knows {sorted(ALBEF_HEADS)}")
        if set(self.heads) & FUSED_HEADS and self.fusion_layers == 0:
            raise ConfigError(f"heads {sorted(set(self.heads) & FUSED_HEADS)} need fusion_layers >= 1")
        if self.text_pooling not in ("first", "mean"):
            raise ConfigError(f"text_pooling must be 'first' or 'mean', got {self.text_pooling!r}")
        if t.max_text_len + t.pad_token_id + 1 > t.max_position_embeddings:
            raise ConfigError("text.max_text_len does not fit text.max_position_embeddings")

    @property
    def num_text_only_layers(self) -> int:
        return self.text.num_layers - self.fusion_layers



class CrossAttention(nn.Module):
    """Text queries attend to image keys/values (BERT's cross-attention; no gate, no mask)."""

    def __init__(self, dim: int, kv_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(kv_dim, dim)
        self.value = nn.Linear(kv_dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """x: [B, T, D] text states; image: [B, N, Ci] -> [B, T, D]."""
        q = split_heads(self.query(x), self.num_heads)
        k, v = split_heads(self.key(image), self.num_heads), split_heads(self.value(image), self.num_heads)
        p = self.dropout if self.training else 0.0
        return self.out(merge_heads(F.scaled_dot_product_attention(q, k, v, dropout_p=p)))


class FusionLayer(nn.Module):
    """A BERT layer with cross-attention: ``h = LN(x + SA(x))``, ``c = LN(h + CA(h, image))``,
    ``y = LN(c + FFN(c))`` (post-norm throughout, like the text-only layers)."""

    def __init__(self, cfg: TextConfig, image_dim: int) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.attention = SelfAttention(d, cfg.num_heads, cfg.dropout)
        self.attention_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.cross = CrossAttention(d, image_dim, cfg.num_heads, cfg.dropout)
        self.cross_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.intermediate = nn.Linear(d, cfg.intermediate_size)
        self.output = nn.Linear(cfg.intermediate_size, d)
        self.output_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """x: [B, T, D]; mask: bool [B, 1, 1, T]; image: [B, N, Ci] -> [B, T, D]."""
        h = self.attention_norm(x + self.dropout(self.attention(x, mask)))
        c = self.cross_norm(h + self.dropout(self.cross(h, image)))
        return self.output_norm(c + self.dropout(self.output(F.gelu(self.intermediate(c)))))


class AlbefTextEncoder(nn.Module):
    """Embeddings, ``num_layers - fusion_layers`` text-only layers (fibervl's :class:`TextLayer`:
    the same post-norm BERT layer), then ``fusion_layers`` :class:`FusionLayer`."""

    def __init__(self, cfg: TextConfig, fusion_layers: int, image_dim: int) -> None:
        super().__init__()
        self.num_text_only = cfg.num_layers - fusion_layers
        self.embeddings = TextEmbeddings(cfg)
        self.layers = nn.ModuleList(
            [TextLayer(cfg) for _ in range(self.num_text_only)]
            + [FusionLayer(cfg, image_dim) for _ in range(fusion_layers)]
        )

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text-only layers: [B, T] -> [B, T, D] (ALBEF's ``mode='text'``)."""
        mask = attention_mask.bool()[:, None, None, :]
        x = self.embeddings(input_ids)
        for layer in self.layers[: self.num_text_only]:
            x = layer(x, mask)
        return x

    def fuse(self, hidden: torch.Tensor, attention_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Fusion layers over :meth:`encode`'s output: [B, T, D], image [B, N, Ci] -> [B, T, D]."""
        mask = attention_mask.bool()[:, None, None, :]
        for layer in self.layers[self.num_text_only:]:
            hidden = layer(hidden, mask, image)
        return hidden


class AlbefModel(HeadLogits, nn.Module):
    def __init__(self, config: AlbefConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        dv, h = config.vision.width, config.hidden_size
        self.vision = VisionTransformer(config.vision)
        self.text = AlbefTextEncoder(config.text, config.fusion_layers, dv)
        if "itc" in config.heads:
            self.vision_proj = nn.Linear(dv, config.embed_dim)
            self.text_proj = nn.Linear(h, config.embed_dim)
        # Image part of cls_feats: the ViT CLS in the heads' width (no weights when they agree).
        self.image_transform = nn.Identity() if dv == h else nn.Linear(dv, h)
        self.heads = Heads(config.heads, h, config.text.vocab_size, config.vqa_num_answers,
                           config.head_layer_norm_eps, config.mlm_layer_norm_eps)
        self.apply(_init_weights)
        if "itc" in config.heads:
            self.temperature = nn.Parameter(torch.tensor(float(config.itc_temperature)))

    # ---- pieces (shared by the modes and by the pre-training task) ---------------------------
    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, 1 + N, Dv] ViT tokens (normed; token 0 is CLS)."""
        return self.vision(images)

    def text_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T] -> [B, T, H] states of the text-only layers."""
        return self.text.encode(input_ids, attention_mask)

    def image_embed(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """[B, 1 + N, Dv] -> [B, E] L2-normalised ITC embedding of the CLS token."""
        self._require("itc")
        return _l2_normalise(self.vision_proj(image_tokens[:, 0]))

    def text_embed(self, text_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T, H] text-only states -> [B, E] L2-normalised ITC embedding of the pooled token."""
        self._require("itc")
        return _l2_normalise(self.text_proj(self._pool_text(text_hidden, attention_mask)))

    def fuse_features(self, image_tokens: torch.Tensor, text_hidden: torch.Tensor,
                      attention_mask: torch.Tensor) -> FusionOutput:
        """Fusion layers over precomputed pieces: image_tokens [B, 1 + N, Dv] (:meth:`image_tokens`),
        text_hidden [B, T, H] (:meth:`text_hidden`), attention_mask [B, T]."""
        fused = self.text.fuse(text_hidden, attention_mask, image_tokens)
        image_feats = self.image_transform(image_tokens)
        cls = torch.cat([self._pool_text(fused, attention_mask), image_feats[:, 0]], dim=-1)
        return FusionOutput(text_feats=fused, image_feats=image_feats, cls_feats=cls, text_hidden=fused,
                            image_stages=[])

    def _pool_text(self, feats: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T, H] -> [B, H]: token 0 (ALBEF's [CLS]) or the mean over real tokens."""
        if self.config.text_pooling == "first":
            return feats[:, 0]
        weights = attention_mask.to(feats.dtype)[..., None]
        return (feats * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)

    def _require(self, head: str) -> None:
        if head not in self.config.heads:
            raise ValueError(f"this model was built without the {head!r} head (config.heads lists its heads)")

    # ---- the vision-language model protocol -------------------------------------------------
    def image_prefix(self, images: torch.Tensor) -> torch.Tensor:
        """What every mode computes alike from the image: the ViT tokens (:meth:`image_tokens`)."""
        return self.image_tokens(images)

    def text_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What every mode computes alike from the text: the text-only layers (:meth:`text_hidden`)."""
        return self.text_hidden(input_ids, attention_mask)

    def encode_image(self, images: torch.Tensor | None = None, *, image_prefix: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 3, S, S] (or its :meth:`image_prefix`) -> [B, E] L2-normalised. No cross-attention runs."""
        return self.image_embed(self.image_tokens(images) if image_prefix is None else image_prefix)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                    text_prefix: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T] -> [B, E] L2-normalised, from the text-only layers. No cross-attention runs."""
        hidden = self.text_hidden(input_ids, attention_mask) if text_prefix is None else text_prefix
        return self.text_embed(hidden, attention_mask)

    def itc_logits(self, image_embed: torch.Tensor, text_embed: torch.Tensor) -> torch.Tensor:
        """[Bi, E], [Bt, E] -> [Bi, Bt] similarities divided by the (clamped) temperature."""
        self._require("itc")
        return image_embed @ text_embed.t() / self.temperature.clamp(0.001, 0.5)

    def fuse(self, images: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
             image_prefix: torch.Tensor | None = None, text_prefix: torch.Tensor | None = None) -> FusionOutput:
        """Fusion-mode forward. images [B, 3, S, S]; input_ids, attention_mask [B, T]; the
        prefixes, when given, replace the passes they stand for.

        Returns text_feats [B, T, H] (fused text states), image_feats [B, 1 + N, H], cls_feats
        [B, 2H] (pooled fused text, ViT CLS), text_hidden (= text_feats), image_stages [].
        """
        image = self.image_tokens(images) if image_prefix is None else image_prefix
        hidden = self.text_hidden(input_ids, attention_mask) if text_prefix is None else text_prefix
        return self.fuse_features(image, hidden, attention_mask)


    def fusion_parameters(self) -> dict[str, int]:
        """Parameter counts of the fusion modules: {"cross_attention": n} (the cross-attention
        and its LayerNorm in every fusion layer)."""
        n = sum(p.numel() for layer in self.text.layers[self.text.num_text_only:]
                for m in (layer.cross, layer.cross_norm) for p in m.parameters())
        return {"cross_attention": n}

    def parameter_groups(self) -> dict[str, list[nn.Module | nn.Parameter]]:
        """The groups a training config names to give them their own learning rate
        (``optim.lr_multipliers``, e.g. ``{heads: 5, fusion: 5}``):

        - ``vision``: the ViT; ``text``: the text encoder, its fusion layers included;
        - ``cross_attention``: each fusion layer's attention to the image tokens (query, key,
          value, output);
        - ``fusion``: what a fusion layer adds to a text layer: ``cross_attention`` and the
          LayerNorm after it;
        - ``itc_projections``: the ITC projections to ``embed_dim`` (with the ``itc`` head);
        - ``heads``; ``temperature`` (with the ``itc`` head).

        Groups overlap (``cross_attention`` lies in ``fusion``, ``fusion`` in ``text``); the
        engine gives a parameter the multiplier of the smallest group named that holds it."""
        fusion_layers = self.text.layers[self.text.num_text_only:]
        groups: dict[str, list] = {"vision": [self.vision], "text": [self.text],
                                   "cross_attention": [layer.cross for layer in fusion_layers],
                                   "fusion": [m for layer in fusion_layers for m in (layer.cross, layer.cross_norm)],
                                   "heads": [self.heads]}
        if "itc" in self.config.heads:
            groups["itc_projections"] = [self.vision_proj, self.text_proj]
            groups["temperature"] = [self.temperature]
        return groups

    # ---- save / load ---------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        from .pretrained import save_pretrained

        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "AlbefModel":
        """The model saved in ``directory`` (a model or run directory); it must be a albef model."""
        from .factory import create_model, resolve_model_dir

        return create_model(resolve_model_dir(directory), device=map_location, family="albef")


# ---- presets -----------------------------------------------------------------------------

def _albef_base() -> AlbefConfig:
    """ALBEF-B as pre-trained: ViT-B/16 at 256 px + BERT-base (6 text-only + 6 fusion layers,
    BERT's 30522-token vocabulary and 512 positions), 256-d ITC embeddings."""
    return AlbefConfig(
        name="albef-base",
        vision=VitConfig(image_size=256, patch_size=16, width=768, depth=12, num_heads=12),
        text=TextConfig(vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                        max_position_embeddings=512, type_vocab_size=2, pad_token_id=0, bos_token_id=101,
                        eos_token_id=102, mask_token_id=103, layer_norm_eps=1e-12, max_text_len=30),
        fusion_layers=6, hidden_size=768, embed_dim=256,
    )


def _albef_tiny() -> AlbefConfig:
    """Sized like ``fiber-tiny`` for fair comparisons on the shapes set: 128 px, a 128-wide
    4-block ViT with 16 px patches (64 patches + CLS); fiber-tiny's text encoder (128 wide,
    4 layers) split 2 text-only + 2 fusion; hidden 128, ITC embeddings 128, mean text pooling
    (the reason is fiber-tiny's: token 0 of a small text encoder trained from scratch collapses)."""
    return AlbefConfig(
        name="albef-tiny",
        vision=VitConfig(image_size=128, patch_size=16, width=128, depth=4, num_heads=2),
        text=TextConfig(vocab_size=2048, hidden_size=128, num_layers=4, num_heads=2, intermediate_size=512,
                        max_position_embeddings=66, mask_token_id=2047, dropout=0.0, max_text_len=40,
                        layer_norm_eps=1e-12),
        fusion_layers=2, hidden_size=128, embed_dim=128, vqa_num_answers=64, text_pooling="mean",
    )


ALBEF_PRESETS = {"albef-base": _albef_base, "albef-tiny": _albef_tiny}

"""VLMo (Bao et al., 2021): one Mixture-of-Modality-Experts (MoME) Transformer, three modes.

Every block is pre-norm: a self-attention shared by all modalities, then a feed-forward *expert*
chosen by what the tokens are:

- image-only input (:meth:`VlmoModel.encode_image`): every block uses its V-FFN;
- text-only input (:meth:`VlmoModel.encode_text`): every block uses its L-FFN;
- fused input (:meth:`VlmoModel.fuse`): text and image tokens concatenated in ONE sequence
  ``[text (T); image CLS + patches (1 + N)]`` under a joint padding mask. In the bottom
  ``num_layers - vl_layers`` blocks the text tokens go to the L-FFN and the image tokens to the
  V-FFN (the paper's routing); in the top ``vl_layers`` blocks all tokens go to the VL-FFN.

Each expert owns the LayerNorm in front of it (as the official code's norm2_text / norm2_imag /
norm2_vl); the final LayerNorm is shared. Simplifications against the official model, on purpose:
absolute learned positions only (no relative position bias) and no layer scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import SerializableConfig, TextConfig
from ..errors import ConfigError
from .fiber import FusionOutput, _init_weights, _l2_normalise
from .heads import HeadLogits, Heads, Pooler
from .layers import DropPath, Mlp, key_padding_mask
from .text import SelfAttention, TextEmbeddings

VLMO_HEADS = frozenset({"itc", "itm", "mlm", "vqa", "nlvr2"})
CLS_HEADS = frozenset({"itm", "vqa", "nlvr2"})
TEXT_TYPE, IMAGE_TYPE = 0, 1


@dataclass
class VlmoVisionConfig:
    """The image input: ``image_size`` px square images cut into ``patch_size`` px patches."""

    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class VlmoConfig(SerializableConfig):
    """A whole VLMo model.

    The shared Transformer's sizes are the top-level fields (``hidden_size``, ``num_layers``,
    ``num_heads``, ``intermediate_size``); ``text`` gives the vocabulary, special ids, positions and
    ``max_text_len`` and must agree with them on ``hidden_size`` (its ``num_layers`` etc. are not
    used: there is no separate text encoder). ``vl_layers``: top blocks that have a VL-FFN.
    ``text_pooling``: the text vector of the ITC embedding and of ``cls_feats``: "first" (token 0,
    the official model) or "mean" (over real tokens; from scratch a small model's token 0 barely
    depends on the others and contrastive training collapses, as with FIBER's tiny preset).
    """

    vision: VlmoVisionConfig = field(default_factory=VlmoVisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    vl_layers: int = 2
    layer_norm_eps: float = 1e-6
    dropout: float = 0.0
    drop_path_rate: float = 0.1
    heads: tuple[str, ...] = ("itc", "itm", "mlm", "vqa", "nlvr2")
    vqa_num_answers: int = 3129
    head_layer_norm_eps: float = 1e-5
    mlm_layer_norm_eps: float = 1e-12
    itc_temperature: float = 0.07
    text_pooling: str = "first"
    name: str = "custom"
    family: str = "vlmo"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        v, t = self.vision, self.text
        if self.family != "vlmo":
            raise ConfigError(f"family must be 'vlmo' for a VlmoConfig, got {self.family!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if t.hidden_size != self.hidden_size:
            raise ConfigError(f"text.hidden_size {t.hidden_size} must equal hidden_size {self.hidden_size} "
                              "(text and image tokens share one Transformer)")
        if not 0 <= self.vl_layers <= self.num_layers:
            raise ConfigError(f"vl_layers={self.vl_layers} must lie in [0, num_layers={self.num_layers}]")
        if v.image_size % v.patch_size:
            raise ConfigError(f"vision.image_size {v.image_size} is not divisible by vision.patch_size {v.patch_size}")
        unknown = set(self.heads) - VLMO_HEADS
        if unknown:
            raise ConfigError(f"unknown heads {sorted(unknown)} for VLMo; known: {sorted(VLMO_HEADS)}")
        if self.text_pooling not in ("first", "mean"):
            raise ConfigError(f"text_pooling must be 'first' or 'mean', got {self.text_pooling!r}")
        if t.max_text_len + t.pad_token_id + 1 > t.max_position_embeddings:
            raise ConfigError("text.max_text_len does not fit text.max_position_embeddings")

    def vl_blocks(self) -> list[int]:
        """Indices of the blocks with a VL-FFN (the top ``vl_layers``)."""
        return list(range(self.num_layers - self.vl_layers, self.num_layers))



# ---- the MoME Transformer -------------------------------------------------------------------

class Expert(nn.Module):
    """One modality expert: its own LayerNorm, then Linear -> GELU -> Linear. [..., H] -> [..., H]."""

    def __init__(self, dim: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x))


class MomeBlock(nn.Module):
    """Pre-norm shared self-attention + a modality-expert FFN.

    ``experts`` holds "image" and "text", and "vl" in the top blocks. ``route`` picks them:
    "image" / "text" / "vl" sends every token to that expert; an int ``T`` (a fused sequence whose
    first T tokens are text) sends tokens ``[:T]`` to "text" and ``[T:]`` to "image".
    """

    def __init__(self, cfg: VlmoConfig, with_vl: bool, drop_path: float) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.attention = SelfAttention(h, cfg.num_heads, cfg.dropout)
        names = ("image", "text", "vl") if with_vl else ("image", "text")
        self.experts = nn.ModuleDict({n: Expert(h, cfg.intermediate_size, cfg.layer_norm_eps) for n in names})
        self.drop_path = DropPath(drop_path)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, route: str | int) -> torch.Tensor:
        """x: [B, L, H]; mask: bool broadcastable to [B, heads, L, L] (True = attend) -> [B, L, H]."""
        x = x + self.drop_path(self.dropout(self.attention(self.norm(x), mask)))
        if isinstance(route, int):
            t = route
            ffn = torch.cat([self.experts["text"](x[:, :t]), self.experts["image"](x[:, t:])], dim=1)
        else:
            ffn = self.experts[route](x)
        return x + self.drop_path(self.dropout(ffn))


class ImageEmbeddings(nn.Module):
    """Conv patch embedding, a CLS token and learned positions: [B, 3, S, S] -> [B, 1 + N, H].

    ``patch_mask`` [B, N] bool with ``mask_token`` [H]: masked patches' embeddings are replaced by
    the mask token before the positions are added (BEiT's masked image modelling input).
    """

    def __init__(self, cfg: VlmoConfig) -> None:
        super().__init__()
        v, h = cfg.vision, cfg.hidden_size
        self.patch = nn.Conv2d(v.in_channels, h, kernel_size=v.patch_size, stride=v.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, h))
        self.position_embeddings = nn.Parameter(torch.zeros(1, 1 + v.num_patches, h))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, images: torch.Tensor, patch_mask: torch.Tensor | None = None,
                mask_token: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patch(images).flatten(2).transpose(1, 2)  # [B, N, H]
        if x.shape[1] + 1 != self.position_embeddings.shape[1]:
            raise ValueError(f"images of {tuple(images.shape[-2:])} px give {x.shape[1]} patches; the model expects "
                             f"{self.position_embeddings.shape[1] - 1} (config.vision.image_size)")
        if patch_mask is not None:
            if mask_token is None:
                raise ValueError("patch_mask needs a mask_token")
            x = torch.where(patch_mask[..., None], mask_token.to(x.dtype), x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        return self.dropout(x + self.position_embeddings.to(x.dtype))


class VlmoModel(HeadLogits, nn.Module):
    """The VLMo model behind the vision-language model protocol (:class:`.protocol.VisionLanguageModel`).

    Parameters: ``image_embeddings``, ``text_embeddings`` (RoBERTa-style, reused from FIBER's text
    encoder), ``type_embeddings`` (modality: 0 text, 1 image, added to every token), ``blocks``,
    ``norm`` (shared final LayerNorm); with "itc" ``itc_image_proj`` / ``itc_text_proj`` (no bias)
    and ``temperature``; with a cls head ``text_pooler`` / ``image_pooler``; ``heads``.
    """

    def __init__(self, config: VlmoConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        h = config.hidden_size
        self.image_embeddings = ImageEmbeddings(config)
        self.text_embeddings = TextEmbeddings(config.text)
        self.type_embeddings = nn.Embedding(2, h)
        vl = set(config.vl_blocks())
        # stochastic depth rising linearly to drop_path_rate in the last block (plain floats: works on meta)
        n = config.num_layers
        rates = [config.drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
        self.blocks = nn.ModuleList(MomeBlock(config, i in vl, rates[i]) for i in range(config.num_layers))
        self.norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        if "itc" in config.heads:
            self.itc_image_proj = nn.Linear(h, h, bias=False)
            self.itc_text_proj = nn.Linear(h, h, bias=False)
        if set(config.heads) & CLS_HEADS:
            self.text_pooler = Pooler(h)
            self.image_pooler = Pooler(h)
        self.heads = Heads(tuple(h_ for h_ in config.heads if h_ != "itc"), h, config.text.vocab_size,
                           config.vqa_num_answers, config.head_layer_norm_eps, config.mlm_layer_norm_eps)
        self.apply(_init_weights)
        nn.init.normal_(self.image_embeddings.cls_token, std=0.02)
        nn.init.normal_(self.image_embeddings.position_embeddings, std=0.02)
        if "itc" in config.heads:
            self.temperature = nn.Parameter(torch.tensor(float(config.itc_temperature)))

    # ---- embeddings and the shared Transformer ---------------------------------------------
    def embed_image(self, images: torch.Tensor, patch_mask: torch.Tensor | None = None,
                    mask_token: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 3, S, S] -> [B, 1 + N, H] (CLS first), with the image type embedding."""
        x = self.image_embeddings(images, patch_mask, mask_token)
        return x + self.type_embeddings.weight[IMAGE_TYPE].to(x.dtype)

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, T] -> [B, T, H], with the text type embedding."""
        x = self.text_embeddings(input_ids)
        return x + self.type_embeddings.weight[TEXT_TYPE].to(x.dtype)

    def run_blocks(self, x: torch.Tensor, mask: torch.Tensor | None, mode: str, text_len: int = 0) -> torch.Tensor:
        """The MoME Transformer and the final norm. x: [B, L, H]; ``mode`` "image", "text" or
        "fused" (then the first ``text_len`` tokens are text). Returns [B, L, H]."""
        vl = set(self.config.vl_blocks())
        for i, block in enumerate(self.blocks):
            route: str | int = mode
            if mode == "fused":
                route = "vl" if i in vl else text_len
            x = block(x, mask, route)
        return self.norm(x)

    def image_states(self, images: torch.Tensor, patch_mask: torch.Tensor | None = None,
                     mask_token: torch.Tensor | None = None) -> torch.Tensor:
        """Image-only pass through the V-FFNs: [B, 3, S, S] -> [B, 1 + N, H]. ``patch_mask`` [B, N]
        and ``mask_token`` [H]: masked image modelling input (see :class:`ImageEmbeddings`)."""
        return self.run_blocks(self.embed_image(images, patch_mask, mask_token), None, "image")

    def text_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text-only pass through the L-FFNs: [B, T] -> [B, T, H]."""
        return self.run_blocks(self.embed_text(input_ids), key_padding_mask(attention_mask), "text")

    def _pool_text(self, feats: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T, H] -> [B, H]: token 0, or the mean over real tokens (``config.text_pooling``)."""
        if self.config.text_pooling == "first":
            return feats[:, 0]
        weights = attention_mask.to(feats.dtype)[..., None]
        return (feats * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)

    # ---- the unfused prefixes --------------------------------------------------------------
    # VLMo's fused sequence attends across both modalities from its first block: all that the
    # modes share is the embeddings.
    def image_prefix(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, 1 + N, H]: the image embeddings (:meth:`embed_image`)."""
        return self.embed_image(images)

    def text_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T] -> [B, T, H]: the text embeddings (:meth:`embed_text`)."""
        return self.embed_text(input_ids)

    # ---- dual encoder ----------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor | None = None, *, image_prefix: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 3, S, S] (or its :meth:`image_prefix`) -> [B, H] L2-normalised ITC embedding
        (image CLS); no text is involved."""
        self._require("itc_image_proj", "itc")
        x = self.embed_image(images) if image_prefix is None else image_prefix
        return _l2_normalise(self.itc_image_proj(self.run_blocks(x, None, "image")[:, 0]))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                    text_prefix: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T] -> [B, H] L2-normalised ITC embedding (``text_pooling``); no image is involved."""
        self._require("itc_text_proj", "itc")
        x = self.embed_text(input_ids) if text_prefix is None else text_prefix
        feats = self.run_blocks(x, key_padding_mask(attention_mask), "text")
        return _l2_normalise(self.itc_text_proj(self._pool_text(feats, attention_mask)))

    def itc_logits(self, image_embed: torch.Tensor, text_embed: torch.Tensor) -> torch.Tensor:
        """[Bi, H], [Bt, H] -> [Bi, Bt] similarities divided by the (clamped) temperature."""
        self._require("temperature", "itc")
        return image_embed @ text_embed.t() / self.temperature.clamp(0.001, 1.0)

    # ---- fusion encoder --------------------------------------------------------------------
    def fuse(self, images: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
             image_prefix: torch.Tensor | None = None, text_prefix: torch.Tensor | None = None) -> FusionOutput:
        """One sequence ``[text (T); image (1 + N)]`` through the MoME Transformer.

        images [B, 3, S, S]; input_ids, attention_mask [B, T] (the prefixes, when given, stand for
        the embeddings). Returns text_feats [B, T, H] (MLM),
        image_feats [B, 1 + N, H] (CLS first), and cls_feats [B, 2H] = the text pooler over the
        pooled text tokens (``text_pooling``; the official model pools token 0 alone) concatenated
        with the image pooler over the fused image CLS: the [B, 2H] layout fibervl's heads take.
        ``text_hidden`` is ``text_feats``; ``image_stages`` is empty (a ViT has no grid stages).
        """
        t = attention_mask.shape[1]
        x = torch.cat([self.embed_text(input_ids) if text_prefix is None else text_prefix,
                       self.embed_image(images) if image_prefix is None else image_prefix], dim=1)
        joint = torch.cat([attention_mask.bool(), attention_mask.new_ones(x.shape[0], x.shape[1] - t).bool()], dim=1)
        out = self.run_blocks(x, key_padding_mask(joint), "fused", t)
        text_feats, image_feats = out[:, :t], out[:, t:]
        if hasattr(self, "text_pooler"):
            cls = torch.cat([self.text_pooler(self._pool_text(text_feats, attention_mask)),
                             self.image_pooler(image_feats[:, 0])], dim=-1)
        else:  # no cls head (e.g. an MLM-only model): unpooled, same layout
            cls = torch.cat([self._pool_text(text_feats, attention_mask), image_feats[:, 0]], dim=-1)
        return FusionOutput(text_feats, image_feats, cls, text_feats, [])


    def _require(self, part: str, head: str) -> None:
        if not hasattr(self, part):
            raise ValueError(f"this model was built without the {head!r} head (see config.heads)")

    # ---- parameter groups used by staged pre-training --------------------------------------
    def expert_parameters(self, expert: str) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of every block's ``expert`` FFN ("image", "text" or "vl")."""
        return [(n, p) for n, p in self.named_parameters() if f".experts.{expert}." in n]

    def fusion_parameters(self) -> dict[str, int]:
        """Parameters only fused inputs use: {"vl_ffn": n} (the attention is shared by all modes)."""
        return {"vl_ffn": sum(p.numel() for _, p in self.expert_parameters("vl"))}

    def parameter_groups(self) -> dict[str, list[nn.Module | nn.Parameter]]:
        """The groups a training config names to give them their own learning rate
        (``optim.lr_multipliers``, e.g. ``{heads: 5, poolers: 5, itc_projections: 5}``):

        - ``embeddings``: the image, text and modality-type embeddings;
        - ``transformer``: the MoME blocks (shared attention and every expert) and the final norm;
        - ``fusion``: the VL experts of the top blocks, which only fused inputs use;
        - ``itc_projections`` and ``temperature`` (with the ``itc`` head);
        - ``poolers``: the text and image poolers of ``cls_feats`` (with an itm, vqa or nlvr2 head);
        - ``heads``.

        ``fusion`` lies inside ``transformer``; the engine gives a parameter the multiplier of
        the smallest group named that holds it."""
        groups: dict[str, list] = {
            "embeddings": [self.image_embeddings, self.text_embeddings, self.type_embeddings],
            "transformer": [self.blocks, self.norm],
            "fusion": [block.experts["vl"] for block in self.blocks if "vl" in block.experts],
            "heads": [self.heads],
        }
        if "itc" in self.config.heads:
            groups["itc_projections"] = [self.itc_image_proj, self.itc_text_proj]
            groups["temperature"] = [self.temperature]
        if hasattr(self, "text_pooler"):
            groups["poolers"] = [self.text_pooler, self.image_pooler]
        return groups

    # ---- save / load -----------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        from .pretrained import save_pretrained

        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "VlmoModel":
        """The model saved in ``directory`` (a model or run directory); it must be a vlmo model."""
        from .factory import create_model, resolve_model_dir

        return create_model(resolve_model_dir(directory), device=map_location, family="vlmo")


# ---- presets ---------------------------------------------------------------------------------

def _vlmo_base() -> VlmoConfig:
    """VLMo-Base: ViT-B/16 width (768, 12 heads, 12 blocks, FFN 3072) at 224 px, VL-FFN in the
    top 2 blocks (the paper's choice), with the library's RoBERTa vocabulary (the official model
    uses BERT's uncased one)."""
    return VlmoConfig(name="vlmo-base", text=TextConfig(hidden_size=768, num_layers=12, num_heads=12))


def _vlmo_tiny() -> VlmoConfig:
    """A CPU preset sized like ``fiber-tiny``: 128 px, 16 px patches (64 + 1 image tokens), width
    128, 2 heads, 6 blocks (FFN 512), VL-FFN in the top 2; the same text vocabulary and length."""
    return VlmoConfig(
        name="vlmo-tiny",
        vision=VlmoVisionConfig(image_size=128, patch_size=16),
        text=TextConfig(
            vocab_size=2048, hidden_size=128, num_layers=6, num_heads=2, intermediate_size=512,
            max_position_embeddings=66, mask_token_id=2047, dropout=0.0, max_text_len=40,
        ),
        hidden_size=128, num_layers=6, num_heads=2, intermediate_size=512, vl_layers=2,
        drop_path_rate=0.0, vqa_num_answers=64, text_pooling="mean",
    )


VLMO_PRESETS = {"vlmo-base": _vlmo_base, "vlmo-tiny": _vlmo_tiny}

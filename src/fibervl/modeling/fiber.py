"""FiberModel: Swin + text encoder with fusion in the backbone, in three modes.

- dual encoder (:meth:`FiberModel.encode_image`, :meth:`FiberModel.encode_text`): no
  cross-attention is computed; L2-normalised embeddings for ITC and O(n + m) retrieval;
- fusion encoder (:meth:`FiberModel.fuse`): both directions of gated cross-attention in the
  paired top blocks, updated simultaneously; features for ITM, MLM, VQA, NLVR2;
- caption mode (:meth:`FiberModel.caption_features`): the image runs unimodally, the text is
  causal and attends to the final image tokens in its fused layers; :meth:`FiberModel.start_caption`
  and :meth:`FiberModel.caption_step` decode incrementally with a key/value cache.

Fusion lives in the top blocks only, so everything below them is the same in every mode: the
*unfused prefix* of each backbone (:meth:`FiberModel.image_prefix`, :meth:`FiberModel.text_prefix`).
A task that runs several passes over the same images or texts (ITC, then ITM pairs, then MLM;
re-ranking a gallery) computes the prefixes once and hands them to the modes, which then run only
the layers above them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import FiberConfig
from .detection.detector import DetectorOutput, GroundingDetector
from .detection.postprocess import GroundingPostProcessor
from .heads import HeadLogits, Heads, Pooler
from .swin import SwinTransformer
from .text import TextEncoder


@dataclass
class FusionOutput:
    """Fused features.

    text_feats: [B, T, H] text tokens after the cross-modal text transform.
    image_feats: [B, N, H] image tokens (last stage) after the cross-modal image transform.
    cls_feats: [B, 2H] concat of the text pooler (token 0, or the token mean: config.text_pooling) and
        the image pooler (token mean).
    text_hidden: [B, T, Dt] text states before the transform.
    image_stages: per stage, [B, Hs, Ws, Cs] fused image grids before merging (for detection).
    """

    text_feats: torch.Tensor
    image_feats: torch.Tensor
    cls_feats: torch.Tensor
    text_hidden: torch.Tensor
    image_stages: list[torch.Tensor]


@dataclass
class CaptionCache:
    """State of incremental caption decoding (see :meth:`FiberModel.caption_step`).

    image_kv: per text layer, the t2i keys/values [B, heads, N, d] of the image (None for
        unfused layers); computed once by :meth:`FiberModel.start_caption`, never again.
    self_kv: per text layer, self-attention keys/values [B, heads, P, d] of the P tokens fed so
        far (None before the first step).
    real: [B] int64, real (non-pad) tokens fed so far, for the RoBERTa positions of the next ones.
    last: [B] int64, the last token fed, for the bigram embeddings; before the first, the pad id
        (what the bigram embeddings put before a text's first token).
    """

    image_kv: list[tuple[torch.Tensor, torch.Tensor] | None]
    self_kv: list[tuple[torch.Tensor, torch.Tensor] | None]
    real: torch.Tensor
    last: torch.Tensor

    @property
    def length(self) -> int:
        """Tokens fed so far (P)."""
        kv = self.self_kv[0]
        return 0 if kv is None else int(kv[0].shape[2])

    def index_select(self, index: torch.Tensor, same_images: bool = False) -> "CaptionCache":
        """Rows ``index`` [B'] of the batch (beam reordering, dropping finished rows). With
        ``same_images`` the caller promises row ``index[i]`` shows the same image as row ``i``
        (beams reordered within their image), so the image keys/values are kept, not copied."""
        def pick(kv):
            return None if kv is None else (kv[0].index_select(0, index), kv[1].index_select(0, index))

        image_kv = self.image_kv if same_images else [pick(kv) for kv in self.image_kv]
        return CaptionCache(image_kv, [pick(kv) for kv in self.self_kv], self.real.index_select(0, index),
                            self.last.index_select(0, index))

    def repeat_interleave(self, n: int) -> "CaptionCache":
        """Each row n times in a row (e.g. one per beam): [B, ...] -> [B * n, ...]."""
        return self.index_select(torch.arange(self.real.shape[0], device=self.real.device).repeat_interleave(n))


class CrossModal(nn.Module):
    """Projections from backbone widths to the shared width H, and the poolers.

    Built as the heads need them: the fused transforms and poolers for fusion-mode heads, the
    ``itc_*`` ones for the dual encoder. ``caption_image_proj[str(layer)]`` maps the final image
    width to a fused text layer's key width when they differ (official ``cross_modal_att_layers``).
    """

    def __init__(self, cfg: FiberConfig, caption_proj_layers: dict[int, int]) -> None:
        super().__init__()
        h, dt, di = cfg.hidden_size, cfg.text.hidden_size, cfg.vision.stage_dims()[-1]
        ordered = cfg.text_pooling == "ordered"  # the tokens side by side -> H, before the pooler
        if set(cfg.heads) & FUSED_HEADS:
            self.text_transform = nn.Linear(dt, h)
            self.image_transform = nn.Linear(di, h)
            self.text_pooler = Pooler(h)
            self.image_pooler = Pooler(h)
            if ordered:
                self.text_order = nn.Linear(cfg.text.max_text_len * h, h)
        if "itc" in cfg.heads:
            self.itc_text_transform = nn.Linear(dt, h)
            self.itc_image_transform = nn.Linear(di, h)
            self.itc_text_pooler = Pooler(h)
            self.itc_image_pooler = Pooler(h)
            if ordered:
                self.itc_text_order = nn.Linear(cfg.text.max_text_len * h, h)
        self.caption_image_proj = nn.ModuleDict(
            {str(layer): nn.Linear(di, width) for layer, width in caption_proj_layers.items()}
        )

    def require(self, part: str, mode: str) -> None:
        if not hasattr(self, part):
            raise ValueError(f"this model was built without {mode} projections (see config.heads)")


FUSED_HEADS = frozenset({"itm", "mlm", "vqa", "nlvr2", "caption"})


class FiberModel(HeadLogits, nn.Module):
    def __init__(self, config: FiberConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        fused_blocks = config.fused_blocks()
        fused_text = config.fused_text_layers()
        dims = config.vision.stage_dims()
        # Each fused text layer's keys/values come from the image grid entering its paired block.
        self._pairs = dict(zip(fused_blocks, fused_text))
        # Swin blocks in execution order as (stage, block); the prefix is the blocks before the
        # first fused one, in both backbones.
        self._blocks = [(s, b) for s, d in enumerate(config.vision.depths) for b in range(d)]
        self._first_fused_block = self._blocks.index(fused_blocks[0]) if fused_blocks else len(self._blocks)
        self._first_fused_layer = fused_text[0] if fused_text else config.text.num_layers
        # Stages the image prefix finishes: those whose last block comes before the first fused one.
        self._prefix_stages = sum(self._blocks.index((s, d - 1)) < self._first_fused_block
                                  for s, d in enumerate(config.vision.depths))
        text_kv_width = {t: dims[s] for (s, _), t in self._pairs.items()}
        self.vision = SwinTransformer(config.vision, fused_blocks, config.text.hidden_size, config.fusion.i2t_query_norm)
        self.text = TextEncoder(config.text, text_kv_width)
        caption_proj = {t: w for t, w in text_kv_width.items() if w != dims[-1]} if "caption" in config.heads else {}
        self.cross_modal = CrossModal(config, caption_proj)
        self.heads = Heads(config.heads, config.hidden_size, config.text.vocab_size, config.vqa_num_answers,
                           config.head_layer_norm_eps, config.mlm_layer_norm_eps)
        if "itc" in config.heads:
            self.temperature = nn.Parameter(torch.tensor(float(config.itc_temperature)))
        self.apply(_init_weights)
        for name, param in self.named_parameters():
            if name.endswith(".alpha"):  # the fusion gates (config.fusion.alpha_init)
                nn.init.constant_(param, config.fusion.alpha_init)
        # The detector keeps its own initialisation (focal-loss prior, conv inits).
        det = config.detection
        self.detector = None if det is None else GroundingDetector(
            in_channels=[dims[s] for s in config.vision.feature_norms], channels=det.channels,
            text_dim=config.text.hidden_size, num_blocks=det.num_blocks, num_groups=det.num_groups,
            strides=det.strides, anchor_sizes=det.anchor_sizes, head_fusion_layers=det.head_fusion_layers,
            head_fusion_heads=det.head_fusion_heads, head_fusion_gate_init=config.fusion.alpha_init,
            location_prior=det.location_prior,
            postprocessor=GroundingPostProcessor(class_scores=det.class_scores),
        )
        # Language prompt tuning: per-position offsets on the text embeddings, zero at the start
        # so that adding them changes nothing until they are trained.
        self.text_prompt_offsets = None
        if det is not None and det.prompt_tuning_tokens > 0:
            self.text_prompt_offsets = nn.Parameter(torch.zeros(det.prompt_tuning_tokens, config.text.hidden_size))
        self._checkpoint_blocks = False
        self._frozen_modules: list[nn.Module] = []

    # ---- activation checkpointing -----------------------------------------------------------
    def set_activation_checkpointing(self, backbone: bool = True, head: bool = True) -> None:
        """Recompute activations in the backward pass instead of keeping them (the official
        ``USE_CHECKPOINT``): ``backbone`` for every Swin block and text layer, ``head`` for every
        DyHead block. The loss and the gradients stay the same (random draws such as dropout are
        replayed); memory falls and a training step costs about one more forward. It acts only
        while training with gradients; inference is unchanged."""
        self._checkpoint_blocks = backbone
        if self.detector is not None:
            self.detector.head.tower.checkpointing = head

    # ---- parts and freezing ------------------------------------------------------------------
    def parts(self) -> dict[str, list[nn.Module | nn.Parameter]]:
        """The model's parts by name, for choosing what trains (:meth:`freeze`): ``vision`` (Swin
        with its image-side fusion and stage norms), ``text`` (text encoder with its text-side
        fusion), ``cross_modal`` (poolers and projections), ``heads``, ``temperature``, and for a
        detector ``fpn``, ``head_tower`` (DyHead), ``head_scales`` (per-level box scales),
        ``head_predictors`` (box, centerness, token projection, logit scale and biases: what
        the official linear probe trains; and the location prior, with ``detection.location_prior``),
        ``head_fusion`` (GLIP-style fusion in the head, when ``detection.head_fusion_layers``
        builds it) and ``prompt`` (:attr:`text_prompt_offsets`)."""
        parts: dict[str, list] = {"vision": [self.vision], "text": [self.text], "cross_modal": [self.cross_modal],
                                  "heads": [self.heads]}
        if "itc" in self.config.heads:
            parts["temperature"] = [self.temperature]
        if self.detector is not None:
            head = self.detector.head
            parts["fpn"] = [self.detector.fpn]
            parts["head_tower"] = [head.tower]
            parts["head_scales"] = [head.scales]
            parts["head_predictors"] = [head.bbox_pred, head.centerness, head.token_proj,
                                        head.log_scale, head.bias_lang, head.bias0]
            if self.detector.location_prior is not None:
                parts["head_predictors"].append(self.detector.location_prior)
            if self.detector.head_fusion is not None:
                parts["head_fusion"] = [self.detector.head_fusion]
        if self.text_prompt_offsets is not None:
            parts["prompt"] = [self.text_prompt_offsets]
        return parts

    def parameter_groups(self) -> dict[str, list[nn.Module | nn.Parameter]]:
        """The groups a training config names to give them their own learning rate
        (``optim.lr_multipliers``, e.g. ``{heads: 5, fusion: 5, gates: 20}``): every part of
        :meth:`parts`, and these groups across or inside them:

        - ``image_to_text``: the image backbone's cross-attention to the text (the fused Swin
          blocks' ``i2t``, gates included);
        - ``text_to_image``: the text encoder's cross-attention to the image (the fused text
          layers' ``t2i``, gates included), the only path from the image to a caption's words;
        - ``gates``: the fusion gates ``alpha`` of both directions (one scalar per fused block
          or layer, :attr:`FiberConfig.fusion.alpha_init` at the start);
        - ``poolers``: the tanh poolers of ``cross_modal`` (fused and ITC);
        - ``fusion``: everything that mixes the modalities, the official ``lr_mult_cross_modal``
          set: both directions of cross-attention and ``cross_modal``;
        - ``detector``: the whole grounding detector (``fpn`` and the head), with a detection head.

        Groups overlap (``gates`` lie in ``fusion``, ``fusion`` in ``vision`` and ``text``);
        the engine gives a parameter the multiplier of the smallest group named that holds it."""
        groups = dict(self.parts())
        groups["image_to_text"] = [b.i2t for b in self._fused_block_modules()]
        groups["text_to_image"] = [layer.t2i for layer in self.text.layers if layer.t2i is not None]
        groups["gates"] = [m.alpha for m in groups["image_to_text"] + groups["text_to_image"]]
        groups["poolers"] = [m for m in self.cross_modal.children() if isinstance(m, Pooler)]
        groups["fusion"] = groups["image_to_text"] + groups["text_to_image"] + [self.cross_modal]
        if self.detector is not None:
            groups["detector"] = [self.detector]
        return groups

    def freeze(self, names) -> int:
        """Stop training the parts named (see :meth:`parts`): ``requires_grad = False``, and their
        modules stay in eval mode (no dropout, no drop path) when the model trains, as the official
        fine-tuning modes keep frozen parts. Returns the number of parameters frozen."""
        parts = self.parts()
        unknown = sorted(set(names) - set(parts))
        if unknown:
            raise ValueError(f"unknown model part(s) {unknown}; this model has {sorted(parts)}")
        frozen = 0
        for name in names:
            for item in parts[name]:
                params = [item] if isinstance(item, nn.Parameter) else list(item.parameters())
                for p in params:
                    p.requires_grad_(False)
                    frozen += p.numel()
                if isinstance(item, nn.Module):
                    self._frozen_modules.append(item)
        self.train(self.training)
        return frozen

    def train(self, mode: bool = True) -> "FiberModel":
        super().train(mode)
        for module in self._frozen_modules:
            module.eval()
        return self

    def _call(self, module: nn.Module, *args, **kwargs):
        """``module(*args, **kwargs)``, checkpointed when :meth:`set_activation_checkpointing` asks."""
        if self._checkpoint_blocks and self.training and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False, **kwargs)
        return module(*args, **kwargs)

    # ---- the unfused prefixes ------------------------------------------------------------
    def image_prefix(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, Hs, Ws, Cs]: the Swin grid entering the first fused block (after
        every block below it, and any patch merging in between). Every mode starts from it."""
        grid, _ = self._run_blocks(self.vision.patch_embed(images), [], 0, self._first_fused_block)
        return grid

    def text_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T] -> [B, T, Dt]: the text states entering the first fused layer."""
        mask = attention_mask.bool()[:, None, None, :]
        x = self.text.embeddings(input_ids)
        if self.text_prompt_offsets is not None:
            rows = self.text_prompt_offsets.shape[0]
            if x.shape[1] > rows:
                raise ValueError(f"{x.shape[1]} text tokens, but the prompt offsets cover {rows} positions "
                                 "(detection.prompt_tuning_tokens)")
            x = x + self.text_prompt_offsets[: x.shape[1]].to(x.dtype)
        for layer in self.text.layers[: self._first_fused_layer]:
            x = self._call(layer, x, mask)
        return x

    def prefix_modules(self) -> list[nn.Module]:
        """The modules :meth:`image_prefix` and :meth:`text_prefix` run: the patch embedding,
        every Swin block below the first fused one (with the patch merging of the stages they
        finish), the text embeddings and the text layers below the first fused one."""
        modules: list[nn.Module] = [self.vision.patch_embed, self.text.embeddings]
        for s, b in self._blocks[: self._first_fused_block]:
            stage = self.vision.stages[s]
            if b == 0 and s == self.vision.position_stage and self.vision.absolute_position is not None:
                modules.append(self.vision.absolute_position)
            modules.append(stage.blocks[b])
            if b == len(stage.blocks) - 1 and stage.downsample is not None:
                modules.append(stage.downsample)
        modules += list(self.text.layers[: self._first_fused_layer])
        return modules

    def freeze_prefix(self) -> int:
        """Stop training the unfused prefixes (``requires_grad = False``): the fused blocks, the
        poolers and the heads still train, and backpropagation stops at the first fused block,
        which makes a fused fine-tuning step about 1.8x cheaper for ``fiber-tiny``. Returns the
        number of parameters frozen."""
        frozen = 0
        for module in self.prefix_modules():
            for p in module.parameters():
                p.requires_grad_(False)
                frozen += p.numel()
            # Frozen modules run in eval mode (see ``train``): a hybrid tower's BatchNorms would
            # otherwise normalise with each batch's statistics and drift their running ones.
            self._frozen_modules.append(module)
        self.train(self.training)
        return frozen

    def _run_blocks(
        self, img: torch.Tensor, stages: list, start: int, stop: int,
        txt: torch.Tensor | None = None, mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Swin blocks ``start`` to ``stop - 1`` (execution order) from grid ``img``; appends each
        finished stage's output to ``stages``. With ``txt`` [B, T, Dt] the fused blocks fuse with
        their text layers (simultaneous update, as the official code: each reads the other's state
        from before the step); without it they run unimodally. Returns (grid, text states)."""
        for k in range(start, stop):
            s, b = self._blocks[k]
            stage = self.vision.stages[s]
            if b == 0:
                img = self.vision.enter_stage(s, img)
            t = self._pairs.get((s, b)) if txt is not None else None
            if t is None:
                img = self._call(stage.blocks[b], img)
            else:
                new_img = self._call(stage.blocks[b], img, txt, mask)
                output_norm = not (self.config.fusion.skip_last_text_norm and t == self.config.text.num_layers - 1)
                txt = self._call(self.text.layers[t], txt, mask, image=img.flatten(1, 2), output_norm=output_norm)
                img = new_img
            if b == len(stage.blocks) - 1:
                stages.append(img)
                if stage.downsample is not None:
                    img = stage.downsample(img)
        return img, txt

    def unfused_image_tokens(self, images: torch.Tensor | None = None, *,
                             image_prefix: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 3, H, W] (or its :meth:`image_prefix`) -> [B, N, C]: the last Swin stage run
        unimodally, before the final norm (what the dual encoder and the captioner read)."""
        grid = self.image_prefix(images) if image_prefix is None else image_prefix
        # The last stage has no patch merging: the grid after its last block is its output.
        grid, _ = self._run_blocks(grid, [], self._first_fused_block, len(self._blocks))
        return grid.flatten(1, 2)

    def unfused_text_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                            text_prefix: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T] (or its :meth:`text_prefix`) -> [B, T, Dt]: the text layers above the prefix run
        without fusion (what the dual encoder pools)."""
        x = self.text_prefix(input_ids, attention_mask) if text_prefix is None else text_prefix
        mask = attention_mask.bool()[:, None, None, :]
        for layer in self.text.layers[self._first_fused_layer:]:
            x = self._call(layer, x, mask)
        return x

    # ---- dual encoder --------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor | None = None, *, image_prefix: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 3, H, W] (or its :meth:`image_prefix`) -> [B, H] L2-normalised ITC image embedding.
        No cross-attention runs."""
        cm = self.cross_modal
        cm.require("itc_image_transform", "dual-encoder (itc)")
        x = self.unfused_image_tokens(images, image_prefix=image_prefix)
        if self.vision.norm is not None:
            x = self.vision.norm(x)
        return _l2_normalise(cm.itc_image_pooler(self._pool_image(cm.itc_image_transform(x))))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                    text_prefix: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T] -> [B, H] L2-normalised ITC text embedding. No cross-attention runs.
        ``text_prefix``: :meth:`text_prefix` of the same ids, when already computed."""
        cm = self.cross_modal
        cm.require("itc_text_transform", "dual-encoder (itc)")
        x = self.unfused_text_tokens(input_ids, attention_mask, text_prefix=text_prefix)
        pooled = self._pool_text(cm.itc_text_transform(x), attention_mask, getattr(cm, "itc_text_order", None))
        return _l2_normalise(cm.itc_text_pooler(pooled))

    def itc_logits(self, image_embed: torch.Tensor, text_embed: torch.Tensor) -> torch.Tensor:
        """[Bi, H], [Bt, H] -> [Bi, Bt] similarities divided by the (clamped) temperature."""
        self.cross_modal.require("itc_text_transform", "dual-encoder (itc)")
        return image_embed @ text_embed.t() / self.temperature.clamp(0.001, 1.0)

    def _pool_text(self, feats: torch.Tensor, attention_mask: torch.Tensor, order: nn.Linear | None = None) -> torch.Tensor:
        """[B, T, H] -> [B, H]: token 0, the mean over real tokens, or (``order``: its projection
        from ``max_text_len * H``) every token in order, pads zeroed (``config.text_pooling``)."""
        if self.config.text_pooling == "first":
            return feats[:, 0]
        if self.config.text_pooling == "ordered":
            length = self.config.text.max_text_len
            if feats.shape[1] > length:
                raise ValueError(f"ordered text pooling reads at most text.max_text_len={length} tokens, got {feats.shape[1]}")
            kept = feats * attention_mask.to(feats.dtype)[..., None]
            return order(F.pad(kept, (0, 0, 0, length - feats.shape[1])).flatten(1))
        weights = attention_mask.to(feats.dtype)[..., None]
        return (feats * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)

    def _pool_image(self, feats: torch.Tensor) -> torch.Tensor:
        """[B, N, H] -> [B, H]: the mean over image tokens, or the per-channel max (``config.image_pooling``)."""
        if self.config.image_pooling == "max":
            return feats.amax(dim=1)
        return feats.mean(dim=1)

    # ---- fusion encoder ------------------------------------------------------------------
    def fuse(self, images: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
             image_prefix: torch.Tensor | None = None, text_prefix: torch.Tensor | None = None) -> FusionOutput:
        """Fusion-mode forward. images [B, 3, H, W]; input_ids, attention_mask [B, T].

        ``image_prefix`` / ``text_prefix``: :meth:`image_prefix` / :meth:`text_prefix` of the same
        inputs, when already computed (``images`` / ``input_ids`` may then be None; the mask is
        always needed); the result is the same.
        """
        cm = self.cross_modal
        cm.require("text_transform", "fusion-mode")
        text_hidden, image_stages = self.fuse_backbones(images, input_ids, attention_mask,
                                                        image_prefix=image_prefix, text_prefix=text_prefix)
        text_feats = cm.text_transform(text_hidden)
        image_feats = cm.image_transform(image_stages[-1].flatten(1, 2))
        cls = torch.cat([cm.text_pooler(self._pool_text(text_feats, attention_mask, getattr(cm, "text_order", None))),
                         cm.image_pooler(self._pool_image(image_feats))], dim=-1)
        return FusionOutput(text_feats, image_feats, cls, text_hidden, image_stages)

    def fuse_backbones(
        self, images: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
        image_prefix: torch.Tensor | None = None, text_prefix: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Run both backbones with fusion. Returns text states [B, T, Dt] and per-stage image grids
        [B, Hs, Ws, Cs] (fused, before merging; what a detection neck takes).

        At each fused step the image block and its text layer read each other's state from
        before the step (simultaneous update), as the official code does. Started from an
        ``image_prefix``, the stages finished inside the prefix were not kept: their entries
        are None (detection needs the pixels).
        """
        mask = attention_mask.bool()[:, None, None, :]
        txt = self.text_prefix(input_ids, attention_mask) if text_prefix is None else text_prefix
        stages: list[torch.Tensor | None] = []
        if image_prefix is None:
            img, _ = self._run_blocks(self.vision.patch_embed(images), stages, 0, self._first_fused_block)
        else:
            img = image_prefix
            stages = [None] * self._prefix_stages
            if self._prefix_stages == len(self.config.vision.depths):  # no fused block: the grid is the last stage
                stages[-1] = img
        _, txt = self._run_blocks(img, stages, self._first_fused_block, len(self._blocks), txt, mask)
        return txt, stages

    # ---- detection -------------------------------------------------------------------------
    def detect(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> DetectorOutput:
        """Fused backbones -> normalised stage maps -> FPN + DyHead grounding head.

        images [B, 3, H, W] (any size; padded inside Swin); input_ids, attention_mask [B, T].
        """
        if self.detector is None:
            raise ValueError("this model has no detection head (config.detection is None)")
        text, stages = self.fuse_backbones(images, input_ids, attention_mask)
        return self.detector(self.vision.feature_maps(stages), text, attention_mask)

    # ---- caption mode --------------------------------------------------------------------
    def caption_image(self, images: torch.Tensor | None = None, *, image_prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Image tokens for captioning: unimodal Swin, no final norm. [B, 3, H, W] (or its
        :meth:`image_prefix`) -> [B, N, C]."""
        return self.unfused_image_tokens(images, image_prefix=image_prefix)

    def caption_features(
        self, image_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Causal text over the image (image never sees the text).

        image_tokens: [B, N, C] from :meth:`caption_image`; input_ids [B, T]; attention_mask [B, T]
        or None (no padding). Returns text_feats [B, T, H] for the LM head (position i predicts i+1).
        """
        self._require_caption()
        t = input_ids.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()[None, None]
        if attention_mask is not None:
            mask = mask & attention_mask.bool()[:, None, None, :]
        x = self.text.embeddings(input_ids)
        for i, layer in enumerate(self.text.layers):
            image = None
            if layer.t2i is not None:
                proj = self.cross_modal.caption_image_proj
                image = proj[str(i)](image_tokens) if str(i) in proj else image_tokens
            x = self._call(layer, x, mask, image=image)
        return self.cross_modal.text_transform(x)

    def start_caption(self, image_tokens: torch.Tensor) -> CaptionCache:
        """An empty decoding cache for ``image_tokens`` [B, N, C] (:meth:`caption_image`): the
        t2i keys/values of every fused text layer are computed here, once per image."""
        self._require_caption()
        image_kv: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for i, layer in enumerate(self.text.layers):
            if layer.t2i is None:
                image_kv.append(None)
                continue
            proj = self.cross_modal.caption_image_proj
            image = proj[str(i)](image_tokens) if str(i) in proj else image_tokens
            image_kv.append(layer.t2i.image_kv(image))
        real = torch.zeros(image_tokens.shape[0], dtype=torch.long, device=image_tokens.device)
        return CaptionCache(image_kv, [None] * len(self.text.layers), real, torch.full_like(real, self.text.embeddings.pad_id))

    def caption_step(self, input_ids: torch.Tensor, cache: CaptionCache) -> tuple[torch.Tensor, CaptionCache]:
        """Feed S new tokens ``input_ids`` [B, S] after those in ``cache``; each costs one
        position of every layer (the past is read from the cache, not recomputed).

        Returns the LM logits [B, vocab] of the last new token (its prediction of the next one)
        and the extended cache. Equals ``mlm_logits(caption_features(image, all_ids))[:, -1]``
        with no attention mask (a pad fed here is attended to, as it is there).
        """
        x = self.text.embeddings(input_ids, past_real=cache.real, previous=cache.last)
        self_kv = []
        for layer, past, image_kv in zip(self.text.layers, cache.self_kv, cache.image_kv):
            x, kv = layer.step(x, past, image_kv)
            self_kv.append(kv)
        real = cache.real + input_ids.ne(self.text.embeddings.pad_id).sum(dim=1)
        logits = self.mlm_logits(self.cross_modal.text_transform(x[:, -1]))
        return logits, CaptionCache(cache.image_kv, self_kv, real, input_ids[:, -1])

    def _require_caption(self) -> None:
        if "caption" not in self.config.heads:
            raise ValueError("this model was built without the caption head (add 'caption' to config.heads)")

    # ---- save / load ---------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        from .pretrained import save_pretrained

        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "FiberModel":
        """The model saved in ``directory`` (a model or run directory); it must be a fiber model."""
        from .factory import create_model, resolve_model_dir

        return create_model(resolve_model_dir(directory), device=map_location, family="fiber")

    def fusion_parameters(self) -> dict[str, int]:
        """Parameter counts of the fusion modules: {"i2t": n, "t2i": n, "caption_proj": n}."""
        i2t = sum(p.numel() for b in self._fused_block_modules() for p in b.i2t.parameters())
        t2i = sum(p.numel() for layer in self.text.layers if layer.t2i is not None for p in layer.t2i.parameters())
        cap = sum(p.numel() for p in self.cross_modal.caption_image_proj.parameters())
        return {"i2t": i2t, "t2i": t2i, "caption_proj": cap}

    def _fused_block_modules(self):
        return [self.vision.stages[s].blocks[b] for s, b in self.config.fused_blocks()]


def _l2_normalise(x: torch.Tensor) -> torch.Tensor:
    # The official code divides by the norm with no epsilon; keep that but guard against 0/0.
    return x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def _init_weights(module: nn.Module) -> None:
    """BERT-style init (normal 0.02, zero bias, unit norms); the fusion gates are set afterwards
    from ``config.fusion.alpha_init``."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

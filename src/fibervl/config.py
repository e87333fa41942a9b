"""Model configuration: nested dataclasses, JSON round trip, named presets.

A config fully describes a model's architecture; weights live beside it in
``model.safetensors``. Everything that differs between the official coarse model, the official
fine-grained backbone and the small CPU presets is a field here, never a code path.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from .errors import ConfigError

# How a detector's class scores relate (``DetectionConfig.class_scores``): each class its own
# yes/no (official GLIP / FIBER), or one class of those a prompt names.
CLASS_SCORES = ("independent", "exclusive")
# How the text tokens become one vector for the poolers (``FiberConfig.text_pooling``).
TEXT_POOLINGS = ("first", "mean", "ordered")


def _check_count(key: str, value: Any) -> None:
    """A ConfigError unless ``value`` is a whole number >= 0 (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{key} must be a whole number >= 0, got {value!r}")


def read_config_json(path: str | Path) -> dict[str, Any]:
    """The mapping in a model's ``config.json``: a missing file, bad JSON or a non-mapping is an
    error naming the file (a UTF-8 byte order mark is accepted)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: invalid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping")
    return data


class SerializableConfig:
    """JSON round trip shared by every model family's config dataclass: ``to_dict``,
    ``from_dict`` (unknown keys rejected, lists become tuples), ``save``, ``load`` (errors name
    the file) and ``replace``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return _build(cls, data, "config")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path):
        path = Path(path)
        data = read_config_json(path)
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

    def replace(self, **changes: Any):
        """A copy with top-level fields changed (nested: pass whole sub-configs)."""
        return dataclasses.replace(self, **changes)


@dataclass
class SwinConfig:
    """The image backbone (Swin Transformer).

    ``window_size`` None means ``image_size // 32``, the official coarse rule (12 at 384 px).
    ``single_window_no_shift``: a stage whose grid fits in one window uses no shift (timm's Swin,
    the official coarse model); the detection Swin of the fine-grained code pads and shifts anyway.
    ``feature_norms``: stages whose outputs get their own LayerNorm for the detection FPN
    (the fine-grained model has norms on stages 1, 2, 3 counted from 0).
    ``conv_stages``: the first N stages are convolutional (conv stem, ResNet basic blocks with
    BatchNorm, strided-conv downsampling everywhere); 0, the official Swin, for fiber-base.
    ``unmerged_stages``: stages that start on the previous stage's grid at its width, with no
    patch merging (or strided conv) before them; () for the official Swin, where every stage
    after the first halves the grid and doubles the width.
    ``absolute_position``: a learned position embedding added to the grid entering the first
    attention stage (Swin's ``ape``, after the patch embedding, when ``conv_stages`` is 0; after
    the conv stages of a hybrid). Off in every preset: without it a tower is nearly
    translation-equivariant (only the zero padding of its convolutions marks where a token lies),
    yet on ``fiber-tiny`` it left the position questions of VQA at chance and cost 3 points of VQA
    and 5 of NLVR2 (docs/results.md).
    """

    image_size: int = 384
    patch_size: int = 4
    in_channels: int = 3
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int | None = None
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.2
    layer_norm_eps: float = 1e-5
    single_window_no_shift: bool = True
    final_norm: bool = True
    feature_norms: tuple[int, ...] = ()
    conv_stages: int = 0
    unmerged_stages: tuple[int, ...] = ()
    absolute_position: bool = False

    @property
    def resolved_window_size(self) -> int:
        return self.window_size if self.window_size is not None else max(1, self.image_size // 32)

    def stage_dims(self) -> list[int]:
        dims = [self.embed_dim]
        for s in range(1, len(self.depths)):
            dims.append(dims[-1] if s in self.unmerged_stages else 2 * dims[-1])
        return dims

    def stage_strides(self) -> list[int]:
        """Each stage's grid stride in pixels (4, 8, 16, 32 for the official Swin)."""
        strides = [self.patch_size]
        for s in range(1, len(self.depths)):
            strides.append(strides[-1] if s in self.unmerged_stages else 2 * strides[-1])
        return strides


@dataclass
class TextConfig:
    """The text backbone (RoBERTa-style: learned positions offset by the padding id).

    ``bigram_buckets`` > 0 gives each token a learned embedding of (previous token, token) as well,
    hashed into that many rows drawn at unit scale (``modeling.text.BigramEmbeddings``; 0, none, in
    every preset). Without it fiber-tiny's fusion, trained from scratch, tells which words a caption
    names but not which goes with which ("a red star and a blue ring" against "a blue star and a red
    ring"); with 4096 rows and the coarse stage's word-swap term it does (docs/results.md, binding).
    """

    vocab_size: int = 50265
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    mask_token_id: int = 50264
    layer_norm_eps: float = 1e-5
    dropout: float = 0.1
    max_text_len: int = 40
    bigram_buckets: int = 0


@dataclass
class FusionConfig:
    """Where and how the two backbones exchange information.

    The last ``num_layers`` Swin blocks (counted across stages) are paired in order with the last
    ``num_layers`` text layers. ``i2t_query_norm``: LayerNorm on the image queries of
    image-to-text attention (official coarse and "v3"; absent in fine-grained "v2").
    ``skip_last_text_norm``: in fusion mode the last text layer skips its output LayerNorm
    (an official coarse quirk; the fine-grained code keeps it).
    ``alpha_init``: the initial value of every fusion gate. The official 0 keeps a model built on
    pre-trained unimodal backbones equal to them at the start; trained from scratch, a closed
    gate gives its cross-attention no gradient and, its output being noise, gets none that
    opens it (docs/results.md), so the CPU presets start with open gates.
    """

    num_layers: int = 6
    i2t_query_norm: bool = True
    skip_last_text_norm: bool = True
    alpha_init: float = 0.0


@dataclass
class DetectionConfig:
    """The fine-grained detection part: FPN over the fused Swin stages named by
    ``vision.feature_norms`` (strides 8/16/32), P6/P7, a DyHead tower of ``num_blocks`` blocks
    (0: none) and the grounding head.

    ``prompt_tuning_tokens``: rows of learnable offsets added to the text embeddings, one per
    token position (the official ``ADD_LINEAR_LAYER`` of language prompt tuning, 1000 rows there);
    0 (the default) is none. Set by the ``language_prompt_v2`` / ``_v4`` tuning modes.

    The detector's input keeps the image's aspect ratio: shorter side ``min_size``, longer side at
    most ``max_size`` (the paper: 800 and 1333); training draws the shorter side from
    ``train_min_sizes`` (the paper: 480..800 by 80). 0 / () fall back to ``vision.image_size``,
    ``min_size`` and ``(min_size,)``, so a square image at the model size is used as it is
    (:func:`fibervl.tasks.grounding.detector_input` resolves them).

    ``head_fusion_layers``: GLIP-style fusion in the head, layers of bidirectional cross-attention
    between the pyramid levels and the text states before the predictors
    (:mod:`fibervl.modeling.detection.head_fusion`, ``head_fusion_heads`` heads, gates starting at
    ``fusion.alpha_init``); 0 (the default, official FIBER) has none: FIBER fuses in the backbone.

    ``location_prior``: the grounding logits also get a prior over places that the expression
    chooses (:mod:`fibervl.modeling.detection.location`), so that "the diamond on the left" can
    prefer one of two diamonds; off in official FIBER.

    ``class_scores``: how detection scores the classes a prompt names: "independent" (official
    GLIP / FIBER: a sigmoid per class) or "exclusive" (a box is one of them: its best class
    probability shared out by a softmax over the classes' logits,
    :func:`~fibervl.modeling.detection.postprocess.exclusive_class_scores`). Inference only:
    training and phrase grounding are the same either way."""

    channels: int = 256
    num_blocks: int = 6
    num_groups: int = 16
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    anchor_sizes: tuple[float, ...] = (64, 128, 256, 512, 1024)
    max_query_len: int = 256
    prompt_tuning_tokens: int = 0
    min_size: int = 0
    max_size: int = 0
    train_min_sizes: tuple[int, ...] = ()
    head_fusion_layers: int = 0
    head_fusion_heads: int = 8
    location_prior: bool = False
    class_scores: str = "independent"


@dataclass
class FiberConfig(SerializableConfig):
    """A whole FIBER model: backbones, fusion, the cross-modal projections and task heads.

    ``heads`` may hold itc, itm, mlm, vqa, nlvr2 and caption. "itc" builds the dual-encoder
    projections; any of the others builds the fused-feature projections and poolers; "caption"
    adds projections of the final image tokens to the fused text layers' key widths and decodes
    with the MLM head. A backbone-only model (the detector's) has no heads.

    ``text_pooling``: which text state the poolers read: "first" (token 0, the official model) or
    "mean" (mean over real tokens). From scratch, token 0 of a small text encoder barely depends on
    the other tokens at initialisation and contrastive training collapses; "mean" avoids that.
    "ordered": every token's state side by side in order (padded to ``text.max_text_len``, pads
    zeroed), projected to the hidden width: a mean makes "is the star left of the square" and "is
    the square left of the star" the same sum, which a fusion trained from scratch does not learn
    to tell apart; read in order it does (docs/results.md, relations in the toy).

    ``image_pooling``: how the poolers reduce the final image tokens: "mean" (the official model)
    or "max" (per channel). A few small objects on a plain background are a few percent of the
    tokens, and a mean dilutes them (docs/results.md measures it).
    """

    vision: SwinConfig = field(default_factory=SwinConfig)
    text: TextConfig = field(default_factory=TextConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    hidden_size: int = 768
    heads: tuple[str, ...] = ("itc", "itm", "mlm", "vqa", "nlvr2", "caption")
    vqa_num_answers: int = 3129
    head_layer_norm_eps: float = 1e-5
    mlm_layer_norm_eps: float = 1e-12
    itc_temperature: float = 0.07
    text_pooling: str = "first"
    image_pooling: str = "mean"
    detection: DetectionConfig | None = None
    name: str = "custom"
    # Every family's config names its family, which is how a saved directory finds its class
    # (:mod:`fibervl.modeling.factory`); a config.json without the key is FIBER's.
    family: str = "fiber"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        v, t, f = self.vision, self.text, self.fusion
        if self.family != "fiber":
            raise ConfigError(f"a FiberConfig has family 'fiber', got {self.family!r}")
        if len(v.depths) != len(v.num_heads):
            raise ConfigError(f"vision.depths {v.depths} and vision.num_heads {v.num_heads} differ in length")
        for dim, heads in zip(v.stage_dims(), v.num_heads):
            if dim % heads:
                raise ConfigError(f"vision stage width {dim} is not divisible by its {heads} heads")
        if t.num_heads < 1 or min(v.num_heads) < 1:
            raise ConfigError("head counts must be positive")
        if t.hidden_size % t.num_heads:
            raise ConfigError(f"text.hidden_size {t.hidden_size} is not divisible by text.num_heads {t.num_heads}")
        if not 0 <= f.num_layers <= min(sum(v.depths), t.num_layers):
            raise ConfigError(
                f"fusion.num_layers={f.num_layers} must lie in [0, {min(sum(v.depths), t.num_layers)}] "
                "(no more than the Swin blocks or the text layers)"
            )
        if not 0 <= v.conv_stages <= len(v.depths):
            raise ConfigError(f"vision.conv_stages must lie in [0, {len(v.depths)}], got {v.conv_stages}")
        convolutional = [(s, b) for s, b in self.fused_blocks() if s < v.conv_stages]
        if convolutional:
            raise ConfigError(f"fusion blocks {convolutional} fall in the first vision.conv_stages={v.conv_stages} "
                              "stages, which are convolutional; fusion needs Swin blocks")
        if v.absolute_position and v.conv_stages == len(v.depths):
            raise ConfigError("vision.absolute_position needs an attention stage to add it to, but every stage is "
                              f"convolutional (vision.conv_stages={v.conv_stages})")
        unknown = set(self.heads) - KNOWN_HEADS
        if unknown:
            raise ConfigError(f"unknown heads {sorted(unknown)}; known: {sorted(KNOWN_HEADS)}")
        if "caption" in self.heads and "mlm" not in self.heads:
            raise ConfigError("the caption head reuses the MLM head: heads must include 'mlm' too")
        if not set(v.unmerged_stages) <= set(range(1, len(v.depths))):
            raise ConfigError(f"vision.unmerged_stages {v.unmerged_stages} must name stages 1..{len(v.depths) - 1} "
                              "(stage 0 starts at the patch embedding)")
        if v.image_size % v.stage_strides()[-1]:
            raise ConfigError(
                f"vision.image_size {v.image_size} must be divisible by the last stage's stride "
                f"{v.stage_strides()[-1]} (patch_size times 2 per merged stage)"
            )
        if self.text_pooling not in TEXT_POOLINGS:
            raise ConfigError(f"text_pooling must be one of {TEXT_POOLINGS}, got {self.text_pooling!r}")
        if self.image_pooling not in ("mean", "max"):
            raise ConfigError(f"image_pooling must be 'mean' or 'max', got {self.image_pooling!r}")
        if self.detection is not None:
            if len(v.feature_norms) != 3:
                raise ConfigError(f"detection needs 3 backbone feature maps (vision.feature_norms), got {v.feature_norms}")
            if self.detection.channels % self.detection.num_groups:
                raise ConfigError("detection.channels must be divisible by detection.num_groups")
            d = self.detection
            backbone_strides = [v.stage_strides()[s] for s in v.feature_norms]
            if len(d.strides) != 5 or list(d.strides[:3]) != backbone_strides:
                raise ConfigError(f"detection.strides {d.strides} must be five levels whose first three are the "
                                  f"strides {backbone_strides} of the vision.feature_norms stages")
            if min(d.min_size, d.max_size, *d.train_min_sizes) < 0 or 0 in d.train_min_sizes:
                raise ConfigError(f"detection input sizes must be positive (0: the default), got min_size={d.min_size}, "
                                  f"max_size={d.max_size}, train_min_sizes={d.train_min_sizes}")
            for key in ("head_fusion_layers", "head_fusion_heads"):
                _check_count(f"detection.{key}", getattr(d, key))
            if d.class_scores not in CLASS_SCORES:
                raise ConfigError(f"detection.class_scores must be one of {CLASS_SCORES}, got {d.class_scores!r}")
            if d.head_fusion_layers and (d.head_fusion_heads < 1 or d.channels % d.head_fusion_heads):
                raise ConfigError(f"detection.head_fusion_heads={d.head_fusion_heads} must be >= 1 and divide "
                                  f"detection.channels={d.channels} (the head fusion attends at the pyramid width)")
        if t.max_text_len + t.pad_token_id + 1 > t.max_position_embeddings:
            raise ConfigError("text.max_text_len does not fit text.max_position_embeddings")
        _check_count("text.bigram_buckets", t.bigram_buckets)

    # ---- fusion layout -------------------------------------------------------------------
    def fused_blocks(self) -> list[tuple[int, int]]:
        """(stage, block) of every fused Swin block, in execution order."""
        blocks = [(s, b) for s, d in enumerate(self.vision.depths) for b in range(d)]
        return blocks[len(blocks) - self.fusion.num_layers :]

    def fused_text_layers(self) -> list[int]:
        """Indices of the fused text layers, paired in order with :meth:`fused_blocks`."""
        n = self.text.num_layers
        return list(range(n - self.fusion.num_layers, n))


KNOWN_HEADS = frozenset({"itc", "itm", "mlm", "vqa", "nlvr2", "caption"})


def _build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys and converting lists to tuples."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = {k: _dataclass_in(v) or v for k, v in get_type_hints(cls).items()}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and value is not None:
            kwargs[key] = _build(hint, value, f"{where}.{key}")
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from None


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass inside ``X | None``, if any."""
    for arg in getattr(hint, "__args__", ()):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


# ---- presets -----------------------------------------------------------------------------

def _fiber_base() -> FiberConfig:
    """The official coarse FIBER-B: Swin-B 384 + RoBERTa-base, fusion in the top 6 blocks."""
    return FiberConfig(name="fiber-base")


def _fiber_base_fine() -> FiberConfig:
    """The backbone of the official fine-grained model (fusion "v2"): detection Swin, no i2t norm."""
    return FiberConfig(
        name="fiber-base-fine",
        vision=SwinConfig(
            image_size=384, window_size=12, drop_path_rate=0.4, single_window_no_shift=False,
            final_norm=False, feature_norms=(1, 2, 3),
        ),
        text=TextConfig(max_text_len=256),
        fusion=FusionConfig(num_layers=6, i2t_query_norm=False, skip_last_text_norm=False),
        heads=(),
        detection=DetectionConfig(min_size=800, max_size=1333, train_min_sizes=(480, 560, 640, 720, 800)),
    )


def _fiber_tiny() -> FiberConfig:
    """A CPU preset for the embedded data set: 128 px, a 32-wide Swin (1/1/2/2 blocks), a 4-layer
    128-wide text encoder, fusion in the top 2 blocks. A coarse pre-training step (ITC + 3x ITM +
    MLM passes) at batch 32 takes about 0.8 s on 2 cores in bf16 (see BENCHMARKS.md)."""
    return FiberConfig(
        name="fiber-tiny",
        vision=SwinConfig(
            image_size=128, embed_dim=32, depths=(1, 1, 2, 2), num_heads=(1, 2, 4, 8),
            window_size=4, drop_path_rate=0.0, conv_stages=3, final_norm=False,
        ),
        text=TextConfig(
            vocab_size=2048, hidden_size=128, num_layers=4, num_heads=2, intermediate_size=512,
            max_position_embeddings=66, mask_token_id=2047, dropout=0.0, max_text_len=40,
        ),
        fusion=FusionConfig(num_layers=2, alpha_init=1.0),
        hidden_size=128,
        vqa_num_answers=64,
        text_pooling="mean",
        image_pooling="max",
    )


def _fiber_tiny_fine() -> FiberConfig:
    """``fiber-tiny`` with the fine-grained detector: FPN over stages 1-3 (16x16, 8x8, 4x4 at
    128 px), 64 channels, anchors 16..256 px (8 x stride / 4: the shapes objects are 13-51 px),
    and no DyHead tower: the predictors read the FPN levels. A 2-block tower lost most of the
    colour information of the FPN (linear probe 79 % -> 27 %) and cut phrase grounding from 69.2
    to 62.5 and REC from 53.7 to 46.0 after the same 400 fine-grained steps, at 1.8x the step
    time (docs/results.md). Backbone and fusion are exactly the coarse model's (i2t query norm
    kept), so every backbone weight of a coarse checkpoint is re-used; the coarse heads are dropped.
    The grounding logits get the expression's prior over places (``location_prior``): trained in
    the REC stage alone from the same fine-grained model, it takes position expressions ("the
    black diamond on the left") from 53.0 to 90.4 % and REC from 78.3 to 86.8 (docs/results.md).
    Detection scores a box's classes as exclusive (``class_scores``): on the validation images,
    the main job's detection model gains zero-shot AP 15.7 -> 28.0 and detection AP 50.7 -> 54.8."""
    tiny = _fiber_tiny()
    return tiny.replace(
        name="fiber-tiny-fine",
        vision=dataclasses.replace(tiny.vision, feature_norms=(1, 2, 3)),
        heads=(),
        detection=DetectionConfig(channels=64, num_blocks=0, num_groups=8, anchor_sizes=(16, 32, 64, 128, 256),
                                  max_query_len=40, location_prior=True, class_scores="exclusive"),
    )


PRESETS = {
    "fiber-base": _fiber_base,
    "fiber-base-fine": _fiber_base_fine,
    "fiber-tiny": _fiber_tiny,
    "fiber-tiny-fine": _fiber_tiny_fine,
}


def get_preset(name: str) -> FiberConfig:
    """A fresh config for preset ``name``; an unknown name lists the known ones."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}") from None

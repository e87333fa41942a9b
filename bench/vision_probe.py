"""Issue 31 probe: can the fiber-tiny image tower alone, trained supervised, tell the colour and
shape of the one object in an image?

Renders single-object scenes with the shapes generator's own sampler and renderer, then trains
the all-Swin tower of ``FiberModel(get_preset("fiber-tiny"))`` (``conv_stages=0``; see ``probe_config``) from scratch with two linear heads
(colour, shape) by cross-entropy, through the main job's transforms and normalisation. Reports
accuracy on the training images (eval transforms: can it fit?) and on held-out images.

    python bench/vision_probe.py                      # default: train transforms, max pooling, last stage
    python bench/vision_probe.py --no-jitter          # resize + flip only
    python bench/vision_probe.py --pool mean
    python bench/vision_probe.py --stage 2            # pool stage 2 (0-based) instead of the last
    python bench/vision_probe.py --patch-size 2
    python bench/vision_probe.py --cnn                # a small CNN as a reference
    python bench/vision_probe.py --stem conv          # overlapping 3x3 stride-2 conv stem instead of 4x4 patches
    python bench/vision_probe.py --window 8 --heads 2,4,8,16 --depths 2,2,2,2   # tower shape
    python bench/vision_probe.py --warmup 0.3 --rpb-decay 0 --init torch        # optimisation
    python bench/vision_probe.py --backgrounds plain --train-images 19200       # the main job's backgrounds, fresh images every step
    python bench/vision_probe.py --conv-mlp | --peg                             # local mixing inside the Swin blocks
    python bench/vision_probe.py --stem conv --merge conv --merge-norm bn --merge-act --conv-stages 3 --no-final-norm
                                                      # the hybrid tower fiber-tiny now uses (vision.conv_stages=3)

Accuracy is also reported per object size (small 13-18 px, medium 23-32 px, large 38-51 px).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fibervl.config import get_preset
from fibervl.data.samples import Sample
from fibervl.data.shapes.render import render
from fibervl.data.shapes.scene import sample_scene, scene_rng
from fibervl.data.shapes.vocab import BACKGROUNDS, COLOR_NAMES, SHAPES, SIZE_NAMES
from fibervl.data.transforms import Compose, Normalize, RandomHorizontalFlip, Resize, eval_transforms, to_tensor, \
    train_transforms
from fibervl.engine.precision import bf16_is_fast
from fibervl.modeling.fiber import FiberModel


def make_split(split: str, n: int, size: int, seed: int, backgrounds: tuple[str, ...] = BACKGROUNDS):
    """n one-object scenes: (PIL images, colour labels, shape labels, size labels)."""
    images, colors, shapes, sizes = [], [], [], []
    for i in range(n):
        scene = sample_scene(scene_rng(seed, split, i), i, split, size, 1, 1, backgrounds)
        obj = scene.objects[0]
        images.append(render(scene))
        colors.append(COLOR_NAMES.index(obj.color))
        shapes.append(SHAPES.index(obj.shape))
        sizes.append(SIZE_NAMES.index(obj.size))
    return images, torch.tensor(colors), torch.tensor(shapes), torch.tensor(sizes)


def to_batch(images, transform, normalize) -> torch.Tensor:
    out = []
    for i, image in enumerate(images):
        image, _ = transform(image, Sample(sample_id=str(i), image_id=i))
        out.append(normalize(to_tensor(image)))
    return torch.stack(out)


def conv_norm(channels: int, norm: str) -> nn.Module:
    """A norm over the channels of a [B, C, H, W] map."""
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "gn":
        return nn.GroupNorm(max(1, channels // 8), channels)
    return nn.GroupNorm(1, channels)  # "ln": one group = LayerNorm over (C, H, W)


class ProbeConvStem(nn.Module):
    """Prototype of an overlapping conv stem: log2(patch) 3x3 stride-2 conv + norm + ReLU layers
    (channels growing to the embed width), a 1x1 conv, then the tower's channels-last LayerNorm.
    [B, 3, H, W] -> [B, H/p, W/p, C], as PatchEmbed."""

    def __init__(self, patch: int, dim: int, norm: str, eps: float):
        super().__init__()
        layers, chans = [], 3
        n = patch.bit_length() - 1
        for i in range(n):
            out = dim // 2 ** (n - 1 - i)
            layers += [nn.Conv2d(chans, out, 3, stride=2, padding=1, bias=False), conv_norm(out, norm),
                       nn.ReLU(inplace=True)]
            chans = out
        layers.append(nn.Conv2d(chans, dim, 1))
        self.body = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, images):
        return self.norm(self.body(images).permute(0, 2, 3, 1))


class ProbeConvMerge(nn.Module):
    """Prototype of an overlapping downsampling between stages: 3x3 stride-2 conv (C -> 2C) +
    LayerNorm, in place of PatchMerging's non-overlapping 2x2 concat. [B, H, W, C] -> [B, H/2, W/2, 2C]."""

    def __init__(self, dim: int, eps: float, act: bool = False, norm: str = "ln"):
        super().__init__()
        self.conv = nn.Conv2d(dim, 2 * dim, 3, stride=2, padding=1)
        self.channels_norm = norm
        self.norm = nn.LayerNorm(2 * dim, eps=eps) if norm == "ln" else conv_norm(2 * dim, norm)
        # Optional GELU after the norm: a nonlinearity on the downsampling path itself, as a CNN
        # has after every stride-2 layer (the Swin's own path is linear + LayerNorm).
        self.act = nn.GELU() if act else nn.Identity()

    def forward(self, x):
        y = self.conv(x.permute(0, 3, 1, 2))
        if self.channels_norm != "ln":  # over batch and positions, per channel, as the CNN
            return self.act(self.norm(y).permute(0, 2, 3, 1))
        return self.act(self.norm(y.permute(0, 2, 3, 1)))


class ProbeConvMlp(nn.Module):
    """Prototype of a locally mixing MLP (LocalViT / CeiT's LeFF): Linear -> depthwise 3x3 conv over
    the token grid -> GELU -> Linear. [B, H, W, C] -> [B, H, W, C], as the block's Mlp."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.fc1, self.fc2 = mlp.fc1, mlp.fc2
        hidden = mlp.fc1.out_features
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)

    def forward(self, x):
        h = self.fc1(x).permute(0, 3, 1, 2)
        h = self.dw(h).permute(0, 2, 3, 1)
        return self.fc2(nn.functional.gelu(h))


class ProbePositionConv(nn.Module):
    """Prototype of a conditional position encoding (CPVT's PEG): x + depthwise 3x3 conv(x) before
    a block. [B, H, W, C] -> [B, H, W, C]."""

    def __init__(self, block: nn.Module, dim: int):
        super().__init__()
        self.block = block
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x):
        return self.block(x + self.dw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class ProbeConvBlock(nn.Module):
    """Prototype of a convolutional block in place of a Swin block: x + BN(conv3x3(ReLU(BN(conv3x3(x)))))
    (a ResNet basic block), then ReLU. [B, H, W, C] -> [B, H, W, C]."""

    def __init__(self, dim: int, norm: str = "bn"):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), conv_norm(dim, norm), nn.ReLU(),
                                  nn.Conv2d(dim, dim, 3, padding=1, bias=False), conv_norm(dim, norm))

    def forward(self, x):
        x = x.permute(0, 3, 1, 2)
        return torch.relu(x + self.body(x)).permute(0, 2, 3, 1)


class ImageNorm(nn.Module):
    """Prototype of a norm that keeps tokens' relative magnitudes: standardise over all tokens and
    channels of each image (GroupNorm with one group), then a per-channel affine. Channels-last:
    [B, ..., C] -> same shape. A per-token LayerNorm instead blows every flat background token up
    to the scale of an object's edge."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim)), eps

    def forward(self, x):
        dims = tuple(range(1, x.dim()))
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, keepdim=True, unbiased=False)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


def probe_config(args):
    """fiber-tiny's vision config as the probe's rows measured it, the all-Swin tower with its final
    norm (the preset's tower is now the hybrid ``conv_stages=3``, which the flags ``--stem conv --merge
    conv --merge-norm bn --merge-act --conv-stages 3 --no-final-norm`` rebuild from the prototypes
    above), with the probe's overrides."""
    cfg = get_preset("fiber-tiny")
    vision = cfg.vision
    changes = {"patch_size": args.patch_size, "conv_stages": 0, "final_norm": True}
    if args.window:
        changes["window_size"] = args.window
    if args.heads:
        changes["num_heads"] = tuple(int(h) for h in args.heads.split(","))
    if args.depths:
        changes["depths"] = tuple(int(d) for d in args.depths.split(","))
    if args.embed_dim:
        changes["embed_dim"] = args.embed_dim
    return dataclasses.replace(cfg, vision=dataclasses.replace(vision, **changes))


class SwinProbe(nn.Module):
    """The fiber-tiny Swin tower, one stage's grid pooled, two linear heads."""

    def __init__(self, args, pool: str):
        super().__init__()
        cfg = probe_config(args)
        self.vision = FiberModel(cfg).vision
        if args.init == "torch":  # PyTorch's default (fan-in) init of every Linear instead of normal(0.02)
            for m in self.vision.modules():
                if isinstance(m, nn.Linear):
                    m.reset_parameters()
        if args.stem == "conv":
            self.vision.patch_embed = ProbeConvStem(args.patch_size, cfg.vision.embed_dim, args.stem_norm,
                                                    cfg.vision.layer_norm_eps)
        if args.merge == "conv":
            for stage, dim in zip(self.vision.stages, self.vision.dims):
                if stage.downsample is not None:
                    stage.downsample = ProbeConvMerge(dim, cfg.vision.layer_norm_eps, args.merge_act, args.merge_norm)
        if args.main_norm == "image":  # the norms on the token path itself (not the blocks' pre-norms)
            self.vision.patch_embed.norm = ImageNorm(cfg.vision.embed_dim)
            for stage, dim in zip(self.vision.stages, self.vision.dims):
                if stage.downsample is not None and hasattr(stage.downsample, "reduction"):
                    stage.downsample.norm = ImageNorm(4 * dim)
            self.vision.norm = ImageNorm(self.vision.dims[-1])
        for stage, dim in list(zip(self.vision.stages, self.vision.dims))[:args.conv_stages]:
            stage.blocks = nn.ModuleList([ProbeConvBlock(dim, args.stem_norm) for _ in stage.blocks])
        if args.conv_mlp:
            for stage in self.vision.stages:
                for block in stage.blocks:
                    block.mlp = ProbeConvMlp(block.mlp)
        if args.peg:
            for stage, dim in zip(self.vision.stages, self.vision.dims):
                stage.blocks[0] = ProbePositionConv(stage.blocks[0], dim)
        self.stage = args.stage % len(self.vision.stages)
        self.pool = pool
        dim = self.vision.dims[self.stage]
        self.final_norm = not args.no_final_norm
        # Optional per-token Linear + ReLU before pooling: features that are zero unless they fire.
        self.prepool = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU()) if args.prepool == "mlp" else nn.Identity()
        dim = 2 * dim if args.prepool == "mlp" else dim
        self.color, self.shape = nn.Linear(dim, len(COLOR_NAMES)), nn.Linear(dim, len(SHAPES))

    def forward(self, x):
        feats = self.vision(x)[self.stage].flatten(1, 2)
        # The final norm belongs to the last stage only (as encode_image applies it).
        if self.final_norm and self.stage == len(self.vision.stages) - 1 and self.vision.norm is not None:
            feats = self.vision.norm(feats)
        feats = self.prepool(feats)
        pooled = feats.amax(1) if self.pool == "max" else feats.mean(1)
        return self.color(pooled), self.shape(pooled)


class TinyCNN(nn.Module):
    """Reference: five stride-2 3x3 conv + BN + ReLU layers, global pooling, two heads."""

    def __init__(self, pool: str, width: int = 32, kernel: int = 3):
        super().__init__()
        chans = [3, width // 2, width, 2 * width, 4 * width, 8 * width]
        layers = []
        for a, b in zip(chans, chans[1:]):
            # kernel 2 (= the stride): non-overlapping, as patch embedding and merging are.
            layers += [nn.Conv2d(a, b, kernel, stride=2, padding=kernel // 2 if kernel % 2 else 0, bias=False),
                       nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.pool = pool
        self.color, self.shape = nn.Linear(chans[-1], len(COLOR_NAMES)), nn.Linear(chans[-1], len(SHAPES))

    def forward(self, x):
        feats = self.body(x).flatten(2)
        pooled = feats.amax(2) if self.pool == "max" else feats.mean(2)
        return self.color(pooled), self.shape(pooled)


@torch.no_grad()
def accuracy(model, images, colors, shapes, sizes, transform, normalize, batch: int = 128):
    """(colour %, shape %, {size name: shape %})."""
    model.eval()
    hit_c, hit_s = [], []
    for i in range(0, len(images), batch):
        c, s = model(to_batch(images[i:i + batch], transform, normalize))
        hit_c.append(c.argmax(1) == colors[i:i + batch])
        hit_s.append(s.argmax(1) == shapes[i:i + batch])
    model.train()
    hit_c, hit_s = torch.cat(hit_c).float(), torch.cat(hit_s).float()
    by_size = {name: 100.0 * hit_s[sizes == k].mean().item() for k, name in enumerate(SIZE_NAMES)}
    return 100.0 * hit_c.mean().item(), 100.0 * hit_s.mean().item(), by_size


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-images", type=int, default=2000)
    p.add_argument("--test-images", type=int, default=500)
    p.add_argument("--pool", choices=("max", "mean"), default=None,
                   help="default: the preset's image_pooling (max for fiber-tiny)")
    p.add_argument("--stage", type=int, default=-1, help="which Swin stage's grid to pool (0-based; -1 = last)")
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--no-jitter", action="store_true", help="train with resize + flip only (no colour jitter)")
    p.add_argument("--cnn", action="store_true", help="train the reference CNN instead of the Swin tower")
    p.add_argument("--cnn-width", type=int, default=32, help="64: about the Swin tower's FLOPs")
    p.add_argument("--cnn-kernel", type=int, default=3, help="2: non-overlapping stride-2 kernels")
    p.add_argument("--merge", choices=("patch", "conv"), default="patch",
                   help="conv: 3x3 stride-2 conv + LayerNorm between stages instead of PatchMerging")
    p.add_argument("--merge-act", action="store_true", help="with --merge conv: GELU after the merge's norm")
    p.add_argument("--merge-norm", choices=("ln", "bn", "gn"), default="ln", help="with --merge conv: the merge's norm")
    p.add_argument("--stem", choices=("patch", "conv"), default="patch",
                   help="conv: overlapping 3x3 stride-2 conv layers instead of the patch projection")
    p.add_argument("--stem-norm", choices=("bn", "gn", "ln"), default="bn", help="the conv stem's norm")
    p.add_argument("--conv-mlp", action="store_true",
                   help="depthwise 3x3 conv between the two Linears of every block's MLP (LocalViT)")
    p.add_argument("--conv-stages", type=int, default=0,
                   help="the first N stages use ResNet basic blocks instead of Swin blocks (with --stem/--merge conv)")
    p.add_argument("--no-final-norm", action="store_true", help="pool the last stage without the final LayerNorm")
    p.add_argument("--prepool", choices=("none", "mlp"), default="none",
                   help="mlp: Linear(C, 2C) + ReLU on every token before pooling")
    p.add_argument("--main-norm", choices=("layer", "image"), default="layer",
                   help="image: the patch-embedding, merging and final norms standardise over the whole image")
    p.add_argument("--peg", action="store_true",
                   help="x + depthwise 3x3 conv(x) before each stage's first block (CPVT's PEG)")
    p.add_argument("--backgrounds", default="",
                   help="comma-separated background kinds (default: all; the main job's data: plain)")
    p.add_argument("--window", type=int, default=0, help="Swin window (0: the preset's)")
    p.add_argument("--heads", default="", help="heads per stage, e.g. 2,4,8,16 (default: the preset's)")
    p.add_argument("--depths", default="", help="blocks per stage, e.g. 2,2,2,2 (default: the preset's)")
    p.add_argument("--embed-dim", type=int, default=0, help="stage-0 width (0: the preset's)")
    p.add_argument("--init", choices=("fiber", "torch"), default="fiber",
                   help="fiber: normal(0.02) Linear weights (the model's init); torch: PyTorch's fan-in default")
    p.add_argument("--warmup", type=float, default=0.1, help="one-cycle warm-up fraction")
    p.add_argument("--wd", type=float, default=0.05, help="AdamW weight decay")
    p.add_argument("--rpb-decay", type=float, default=None,
                   help="weight decay on relative-position tables, norms and biases (default: --wd; Swin uses 0)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    # One thread: on a shared 2-core machine a 2-thread step stalls whenever one core is taken
    # (0.3 s steps became 1-4 s); two 1-thread runs side by side use both cores instead.
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    cfg = get_preset("fiber-tiny")
    size, pool = cfg.vision.image_size, args.pool or cfg.image_pooling
    t0 = time.perf_counter()
    backgrounds = tuple(args.backgrounds.split(",")) if args.backgrounds else BACKGROUNDS
    train = make_split("train", args.train_images, size, args.seed, backgrounds)
    test = make_split("test", args.test_images, size, args.seed, backgrounds)
    print(f"rendered {args.train_images}+{args.test_images} images in {time.perf_counter() - t0:.1f}s")

    normalize = Normalize()  # ImageNet mean / std, as the main job's Processor
    train_tf = Compose([Resize(size), RandomHorizontalFlip(0.5, swap_left_right=True)]) if args.no_jitter \
        else train_transforms(size)
    eval_tf = eval_transforms(size)

    model = TinyCNN(pool, args.cnn_width, args.cnn_kernel) if args.cnn else SwinProbe(args, pool)
    with FlopCounterMode(display=False) as fc:
        model.eval()
        model(torch.zeros(1, 3, size, size))
        model.train()
    params = sum(q.numel() for q in model.parameters())
    print(f"model: {'cnn' if args.cnn else 'swin'} pool={pool} stage={args.stage} patch={args.patch_size} "
          f"params={params / 1e6:.2f}M forward={fc.get_total_flops() / 2e9:.3f} GMAC/image")

    no_decay = [q for n, q in model.named_parameters() if q.ndim < 2 or "relative_position_bias_table" in n]
    decay = [q for n, q in model.named_parameters() if not (q.ndim < 2 or "relative_position_bias_table" in n)]
    rpb_decay = args.wd if args.rpb_decay is None else args.rpb_decay
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                             {"params": no_decay, "weight_decay": rpb_decay}], lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=args.warmup)
    use_bf16 = bf16_is_fast("cpu")
    ce = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(args.seed)
    images, colors, shapes, _ = train
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(images), (args.batch,), generator=gen)
        x = to_batch([images[i] for i in idx], train_tf, normalize)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            c, s = model(x)
            loss_c, loss_s = ce(c.float(), colors[idx]), ce(s.float(), shapes[idx])
            loss = loss_c + loss_s
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % args.log_every == 0 or step == args.steps:
            print(f"step {step} loss {loss.item():.3f} (colour {loss_c.item():.3f} shape {loss_s.item():.3f}) "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
    seconds = time.perf_counter() - t0

    tr = accuracy(model, *train, eval_tf, normalize)
    te = accuracy(model, *test, eval_tf, normalize)

    def by_size(acc):
        return " ".join(f"{name}={value:.1f}" for name, value in acc[2].items())

    print(f"RESULT steps={args.steps} train_s={seconds:.0f} bf16={use_bf16} "
          f"train colour={tr[0]:.1f} shape={tr[1]:.1f} | held-out colour={te[0]:.1f} shape={te[1]:.1f}")
    print(f"SHAPE BY SIZE train {by_size(tr)} | held-out {by_size(te)}")


if __name__ == "__main__":
    main()

"""Issue 31 probe: can the fiber-tiny image tower alone, trained supervised, tell the colour and
shape of the one object in an image?

Renders single-object scenes with the shapes generator's own sampler and renderer, then trains
the Swin tower of ``FiberModel(get_preset("fiber-tiny"))`` from scratch with two linear heads
(colour, shape) by cross-entropy, through the main job's transforms and normalisation. Reports
accuracy on the training images (eval transforms: can it fit?) and on held-out images.

    python bench/vision_probe.py                      # default: train transforms, max pooling, last stage
    python bench/vision_probe.py --no-jitter          # resize + flip only
    python bench/vision_probe.py --pool mean
    python bench/vision_probe.py --stage 2            # pool stage 2 (0-based) instead of the last
    python bench/vision_probe.py --patch-size 2
    python bench/vision_probe.py --cnn                # a small CNN as a reference
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
from fibervl.data.shapes.vocab import COLOR_NAMES, SHAPES
from fibervl.data.transforms import Compose, Normalize, RandomHorizontalFlip, Resize, eval_transforms, to_tensor, \
    train_transforms
from fibervl.engine.precision import bf16_is_fast
from fibervl.modeling.fiber import FiberModel


def make_split(split: str, n: int, size: int, seed: int):
    """n one-object scenes: (PIL images, colour labels, shape labels)."""
    images, colors, shapes = [], [], []
    for i in range(n):
        scene = sample_scene(scene_rng(seed, split, i), i, split, size, 1, 1)
        obj = scene.objects[0]
        images.append(render(scene))
        colors.append(COLOR_NAMES.index(obj.color))
        shapes.append(SHAPES.index(obj.shape))
    return images, torch.tensor(colors), torch.tensor(shapes)


def to_batch(images, transform, normalize) -> torch.Tensor:
    out = []
    for i, image in enumerate(images):
        image, _ = transform(image, Sample(sample_id=str(i), image_id=i))
        out.append(normalize(to_tensor(image)))
    return torch.stack(out)


class SwinProbe(nn.Module):
    """The fiber-tiny Swin tower, one stage's grid pooled, two linear heads."""

    def __init__(self, patch_size: int, stage: int, pool: str):
        super().__init__()
        cfg = get_preset("fiber-tiny")
        if patch_size != cfg.vision.patch_size:
            cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, patch_size=patch_size))
        self.vision = FiberModel(cfg).vision
        self.stage = stage % len(self.vision.stages)
        self.pool = pool
        dim = self.vision.dims[self.stage]
        self.color, self.shape = nn.Linear(dim, len(COLOR_NAMES)), nn.Linear(dim, len(SHAPES))

    def forward(self, x):
        feats = self.vision(x)[self.stage].flatten(1, 2)
        # The final norm belongs to the last stage only (as encode_image applies it).
        if self.stage == len(self.vision.stages) - 1 and self.vision.norm is not None:
            feats = self.vision.norm(feats)
        pooled = feats.amax(1) if self.pool == "max" else feats.mean(1)
        return self.color(pooled), self.shape(pooled)


class TinyCNN(nn.Module):
    """Reference: five stride-2 3x3 conv + BN + ReLU layers, global pooling, two heads."""

    def __init__(self, pool: str, width: int = 32):
        super().__init__()
        chans = [3, width // 2, width, 2 * width, 4 * width, 8 * width]
        layers = []
        for a, b in zip(chans, chans[1:]):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.pool = pool
        self.color, self.shape = nn.Linear(chans[-1], len(COLOR_NAMES)), nn.Linear(chans[-1], len(SHAPES))

    def forward(self, x):
        feats = self.body(x).flatten(2)
        pooled = feats.amax(2) if self.pool == "max" else feats.mean(2)
        return self.color(pooled), self.shape(pooled)


@torch.no_grad()
def accuracy(model, images, colors, shapes, transform, normalize, batch: int = 128) -> tuple[float, float]:
    model.eval()
    hits_c = hits_s = 0
    for i in range(0, len(images), batch):
        c, s = model(to_batch(images[i:i + batch], transform, normalize))
        hits_c += int((c.argmax(1) == colors[i:i + batch]).sum())
        hits_s += int((s.argmax(1) == shapes[i:i + batch]).sum())
    model.train()
    return 100.0 * hits_c / len(images), 100.0 * hits_s / len(images)


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
    train = make_split("train", args.train_images, size, args.seed)
    test = make_split("test", args.test_images, size, args.seed)
    print(f"rendered {args.train_images}+{args.test_images} images in {time.perf_counter() - t0:.1f}s")

    normalize = Normalize()  # ImageNet mean / std, as the main job's Processor
    train_tf = Compose([Resize(size), RandomHorizontalFlip(0.5, swap_left_right=True)]) if args.no_jitter \
        else train_transforms(size)
    eval_tf = eval_transforms(size)

    model = TinyCNN(pool, args.cnn_width) if args.cnn else SwinProbe(args.patch_size, args.stage, pool)
    with FlopCounterMode(display=False) as fc:
        model.eval()
        model(torch.zeros(1, 3, size, size))
        model.train()
    params = sum(q.numel() for q in model.parameters())
    print(f"model: {'cnn' if args.cnn else 'swin'} pool={pool} stage={args.stage} patch={args.patch_size} "
          f"params={params / 1e6:.2f}M forward={fc.get_total_flops() / 2e9:.3f} GMAC/image")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=0.1)
    use_bf16 = bf16_is_fast("cpu")
    ce = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(args.seed)
    images, colors, shapes = train
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(images), (args.batch,), generator=gen)
        x = to_batch([images[i] for i in idx], train_tf, normalize)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            c, s = model(x)
            loss = ce(c.float(), colors[idx]) + ce(s.float(), shapes[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps:
            print(f"step {step} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    seconds = time.perf_counter() - t0

    tr = accuracy(model, images, colors, shapes, eval_tf, normalize)
    te = accuracy(model, *test, eval_tf, normalize)
    print(f"RESULT steps={args.steps} train_s={seconds:.0f} bf16={use_bf16} "
          f"train colour={tr[0]:.1f} shape={tr[1]:.1f} | held-out colour={te[0]:.1f} shape={te[1]:.1f}")


if __name__ == "__main__":
    main()

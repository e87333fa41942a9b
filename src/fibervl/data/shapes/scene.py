"""Scene specifications: which objects, where, how large, with what look.

A scene is sampled from its own ``random.Random`` (seeded from the data set seed, the split
and the image index), so any image can be regenerated alone and the result does not depend
on how the work was split between processes.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from .vocab import BACKGROUNDS, COLOR_NAMES, SHAPES, SIZES, SIZE_NAMES, TEXTURES

MAX_OVERLAP = 0.25  # of the smaller box: keeps occlusion partial, every object identifiable


@dataclass
class ObjectSpec:
    """One object. ``box`` is the amodal xyxy extent in pixels (before occlusion)."""

    shape: str
    color: str
    size: str
    cx: float
    cy: float
    extent: float  # longer side of the shape's box, pixels
    rotation: float  # degrees
    texture: str
    shade_seed: int
    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    # Filled in by the renderer: the visible part, xyxy pixels (integers as floats).
    visible_box: tuple[float, float, float, float] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.color, self.shape)

    @property
    def center(self) -> tuple[float, float]:
        b = self.visible_box or self.box
        return ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)


@dataclass
class SceneSpec:
    image_id: int
    split: str
    size: int
    background: str
    bg_color: tuple[int, int, int]
    bg_seed: int
    objects: list[ObjectSpec] = field(default_factory=list)


def scene_rng(seed: int, split: str, index: int, stream: str = "scene") -> random.Random:
    """A generator private to one image (and one purpose), independent of worker layout."""
    return random.Random(f"{seed}/{split}/{index}/{stream}")


def _overlap_fraction(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller


def sample_scene(rng: random.Random, image_id: int, split: str, image_size: int,
                 min_objects: int = 2, max_objects: int = 8, backgrounds: tuple[str, ...] = BACKGROUNDS,
                 shapes: tuple[str, ...] = SHAPES) -> SceneSpec:
    """Sample 2..8 non-hiding objects on a random background, of the given ``shapes``.

    With probability 1/2 one (colour, shape) pair is repeated, so that referring
    expressions and questions often need size or position to single out an object.
    """
    grey = rng.randint(85, 170)
    bg_color = tuple(max(0, min(255, grey + rng.randint(-18, 18))) for _ in range(3))
    scene = SceneSpec(image_id, split, image_size, rng.choice(backgrounds), bg_color, rng.getrandbits(32))
    target = rng.randint(min_objects, max_objects)
    duplicate_at = rng.randint(1, target - 1) if target > 1 and rng.random() < 0.5 else -1
    attempts = 0
    while len(scene.objects) < target and attempts < 40 * target:
        attempts += 1
        if len(scene.objects) == duplicate_at:
            src = rng.choice(scene.objects)
            shape, color = src.shape, src.color
        else:
            shape, color = rng.choice(shapes), rng.choice(COLOR_NAMES)
        size = rng.choice(SIZE_NAMES)
        lo, hi = SIZES[size]
        extent = rng.uniform(lo, hi) * image_size
        half = extent / 2
        cx = rng.uniform(half + 1, image_size - half - 1)
        cy = rng.uniform(half + 1, image_size - half - 1)
        box = (cx - half, cy - half, cx + half, cy + half)
        if any(_overlap_fraction(box, o.box) > MAX_OVERLAP for o in scene.objects):
            continue
        # Small rotations only: a square turned 45 degrees would be a diamond.
        rotation = rng.uniform(-20, 20)
        scene.objects.append(ObjectSpec(shape, color, size, cx, cy, extent, rotation,
                                        rng.choice(TEXTURES), rng.getrandbits(32), box))
    if len(scene.objects) < min_objects:  # practically never: retry with a fresh draw
        return sample_scene(rng, image_id, split, image_size, min_objects, max_objects, backgrounds)
    return scene


def unit_polygon(shape: str) -> list[tuple[float, float]] | None:
    """Outline in [-1, 1]^2 (y down), or None for shapes drawn from ellipses."""
    if shape == "square":
        return [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)]
    if shape == "triangle":
        return [(0.0, -1.0), (1.0, 0.85), (-1.0, 0.85)]
    if shape == "diamond":
        return [(0.0, -1.0), (0.75, 0.0), (0.0, 1.0), (-0.75, 0.0)]
    if shape == "hexagon":
        return [(math.cos(a), math.sin(a)) for a in (math.radians(60 * k) for k in range(6))]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            a = math.radians(-90 + 36 * k)
            pts.append((r * math.cos(a), r * math.sin(a)))
        return pts
    if shape == "cross":
        t = 0.33
        return [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t)]
    if shape == "heart":
        pts = []
        for k in range(32):
            a = 2 * math.pi * k / 32
            x = 16 * math.sin(a) ** 3
            y = -(13 * math.cos(a) - 5 * math.cos(2 * a) - 2 * math.cos(3 * a) - math.cos(4 * a))
            pts.append((x / 16.5, (y + 2.5) / 15.0))
        return pts
    return None  # circle, ring, crescent

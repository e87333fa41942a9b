"""Draw a scene: textured background, textured anti-aliased shapes, visible boxes.

Shapes are drawn into a 2x supersampled mask (so 13 px objects keep their outline) and
composited in order; later objects occlude earlier ones. The box stored for each object is
the extent of its *visible* pixels, as in COCO. Pixel noise (the sensor-like noise everywhere,
speckled backgrounds, noise textures) is a window of a fixed bank (:func:`_noise`).
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw

from .scene import ObjectSpec, SceneSpec, unit_polygon
from .vocab import COLORS

SUPERSAMPLE = 2


def _normalised(points):
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    half = max(max(xs) - min(xs), max(ys) - min(ys)) / 2
    return [((x - cx) / half, (y - cy) / half) for x, y in points]


_POLYGONS = {}

# Seed of the noise banks: fixed, so a scene's pixels depend only on its own seeds.
NOISE_BANK_SEED = 0x5EED
_NOISE_BANKS: dict[int, np.ndarray] = {}


def _noise(rng: np.random.Generator, h: int, w: int, channels: int = 3) -> np.ndarray:
    """[h, w, channels] float32 standard-normal noise: the window at an offset drawn from ``rng``
    of a bank drawn once per process (side 2s for the smallest power of two s >= h, w).

    Why a bank: drawing h * w * 3 fresh normals was two thirds of rendering a plain 128 px scene,
    and the image stage renders a fresh scene for every sample it trains on. Every window has the
    same per-pixel distribution, and (s + 1)^2 or more offsets keep two scenes from sharing theirs.
    """
    side = 1 << (max(h, w, 1) - 1).bit_length()
    if side not in _NOISE_BANKS:
        _NOISE_BANKS[side] = np.random.default_rng(NOISE_BANK_SEED + side).standard_normal(
            (2 * side, 2 * side, 3), dtype=np.float32)
    bank = _NOISE_BANKS[side]
    y = int(rng.integers(0, bank.shape[0] - h + 1))
    x = int(rng.integers(0, bank.shape[1] - w + 1))
    return bank[y:y + h, x:x + w, :channels]


def _polygon(shape):
    if shape not in _POLYGONS:
        pts = unit_polygon(shape)
        _POLYGONS[shape] = _normalised(pts) if pts is not None else None
    return _POLYGONS[shape]


def _draw_mask(obj: ObjectSpec, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Coverage in [0, 1] of the object over its bounding square; returns (alpha, (x0, y0))."""
    half = obj.extent / 2
    x0, y0 = max(0, int(math.floor(obj.cx - half)) - 1), max(0, int(math.floor(obj.cy - half)) - 1)
    x1, y1 = min(size, int(math.ceil(obj.cx + half)) + 1), min(size, int(math.ceil(obj.cy + half)) + 1)
    w, h = x1 - x0, y1 - y0
    s = SUPERSAMPLE
    mask = Image.new("L", (w * s, h * s), 0)
    draw = ImageDraw.Draw(mask)
    # Centre and radius in supersampled local coordinates.
    cx, cy, r = (obj.cx - x0) * s, (obj.cy - y0) * s, half * s
    poly = _polygon(obj.shape)
    if poly is not None:
        a = math.radians(obj.rotation)
        ca, sa = math.cos(a), math.sin(a)
        pts = [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in poly]
        draw.polygon(pts, fill=255)
    elif obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif obj.shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ri = r * 0.55
        draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    elif obj.shape == "crescent":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        # Cut-out disc shifted along the rotation direction.
        a = math.radians(obj.rotation)
        ox, oy = cx + 0.45 * r * math.cos(a), cy + 0.45 * r * math.sin(a) - 0.25 * r
        ri = r * 0.85
        draw.ellipse([ox - ri, oy - ri, ox + ri, oy + ri], fill=0)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")
    small = mask.resize((w, h), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0, (x0, y0)


def _texture(obj: ObjectSpec, h: int, w: int) -> np.ndarray:
    """[h, w, 3] float32 fill: the object's colour with a brightness pattern (hue kept)."""
    rng = np.random.default_rng(obj.shade_seed)
    base = np.array(COLORS[obj.color], dtype=np.float32) + rng.uniform(-10, 10, size=3).astype(np.float32)
    yy, xx = (g[:h, :w] for g in _grid(max(h, w)))
    if obj.texture == "stripes":
        period = rng.uniform(3, 6)
        angle = rng.uniform(0, math.pi)
        shade = 22 * np.sign(np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period))
    elif obj.texture == "dots":
        period = rng.integers(3, 6)
        shade = np.where(((xx.astype(int) % period) < 2) & ((yy.astype(int) % period) < 2), -28.0, 6.0)
    elif obj.texture == "noise":
        shade = 14 * _noise(rng, h, w, 1)[..., 0]
    elif obj.texture == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        ramp = xx * math.cos(angle) + yy * math.sin(angle)
        ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1.0)
        shade = (ramp - 0.5) * 44
    else:
        shade = np.zeros((h, w), dtype=np.float32)
    # Dark colours get lighter patterns and vice versa so the pattern stays visible.
    direction = 1.0 if base.mean() < 60 else (-1.0 if base.mean() > 200 else 1.0)
    return base[None, None, :] + direction * shade[..., None]


_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    if size not in _GRIDS:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        _GRIDS[size] = (yy, xx)
    return _GRIDS[size]


def _background(scene: SceneSpec) -> np.ndarray:
    size = scene.size
    rng = np.random.default_rng(scene.bg_seed)
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = np.array(scene.bg_color, dtype=np.float32)
    yy, xx = _grid(size)
    kind = scene.background
    if kind == "striped":
        period = rng.uniform(6, 16)
        angle = rng.uniform(0, math.pi)
        img += (14 * np.sign(np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)))[..., None]
    elif kind == "checkered":
        cell = int(rng.integers(8, 20))
        img += (12 * (((xx // cell + yy // cell) % 2) * 2 - 1))[..., None]
    elif kind == "speckled":
        img += 16 * _noise(rng, size, size, 1)
    elif kind == "cloudy":
        coarse = rng.normal(0, 22, size=(6, 6, 3)).astype(np.float32)
        up = np.asarray(Image.fromarray(coarse.astype(np.float32)[..., 0]).resize((size, size), Image.BICUBIC))
        img += up[..., None]
    img += 4 * _noise(rng, size, size)  # sensor-like noise everywhere
    return img


def render(scene: SceneSpec) -> Image.Image:
    """Draw ``scene``; fills each object's ``visible_box`` (xyxy, pixels) in place."""
    size = scene.size
    canvas = _background(scene)
    drawn = []  # (object, its pixels at coverage >= 0.5 [h, w] bool, (y0, x0))
    for obj in scene.objects:
        alpha, (x0, y0) = _draw_mask(obj, size)
        h, w = alpha.shape
        region = canvas[y0:y0 + h, x0:x0 + w]
        fill = _texture(obj, h, w)
        region[:] = region * (1 - alpha[..., None]) + fill * alpha[..., None]
        drawn.append((obj, alpha >= 0.5, (y0, x0)))
    covered = np.zeros((size, size), dtype=bool)
    for obj, mask, (y0, x0) in reversed(drawn):
        h, w = mask.shape
        window = covered[y0:y0 + h, x0:x0 + w]
        visible = mask & ~window
        window |= mask
        rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
        if len(cols) == 0:  # cannot happen with MAX_OVERLAP < 1, kept as a guard
            raise RuntimeError(f"image {scene.image_id}: a {obj.color} {obj.shape} is fully hidden")
        obj.visible_box = (float(x0 + cols[0]), float(y0 + rows[0]), float(x0 + cols[-1] + 1), float(y0 + rows[-1] + 1))
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str) -> bytes:
    """PNG, or JPEG at quality 95 without chroma subsampling (colours stay crisp)."""
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, format="PNG", compress_level=1)
    elif fmt == "jpg":
        image.save(buf, format="JPEG", quality=95, subsampling=0)
    else:
        raise ValueError(f"image format must be 'jpg' or 'png', got {fmt!r}")
    return buf.getvalue()

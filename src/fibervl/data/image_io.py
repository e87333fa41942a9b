"""Robust image loading: every odd file either becomes an RGB image or a clear DataError.

Handled: EXIF orientation (applied), grayscale / palette / RGBA / LA / CMYK / 16-bit and
32-bit integer / float images (converted to 8-bit RGB; transparent pixels composited on
white), huge images (refused above ``max_pixels``, optionally downscaled to ``max_side``).
Refused with the file named: missing, zero-byte, not an image (e.g. text saved as .jpg),
truncated or otherwise undecodable files.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError

# Decompression-bomb guard of our own (PIL's warns at 89M and fails at 179M pixels).
DEFAULT_MAX_PIXELS = 100_000_000


def load_image(
    path: str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
    record: object = None,
) -> Image.Image:
    """Read ``path`` as an RGB PIL image in its displayed (EXIF-applied) orientation.

    max_pixels: refuse images with more pixels than this (before decoding them).
    max_side:   if given, downscale so that the longer side is at most this (aspect kept);
                callers holding boxes must rescale them (see ``processor.sync_image_size``).
    record:     the record id, only for error messages.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "image file not found", record) from None
    except OSError as exc:
        raise DataError(path, f"cannot read image file: {exc}", record) from exc
    return decode_image(data, path, max_pixels=max_pixels, max_side=max_side, record=record)


def decode_image(
    data: bytes,
    name: str | Path = "<bytes>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
    record: object = None,
) -> Image.Image:
    """Decode encoded image bytes (as read from a file or a tar shard); see :func:`load_image`."""
    if len(data) == 0:
        raise DataError(name, "empty image file (0 bytes)", record)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w <= 0 or h <= 0:
                raise DataError(name, f"image has no pixels ({w}x{h})", record)
            if w * h > max_pixels:
                raise DataError(name, f"image too large: {w}x{h} = {w * h} pixels > max_pixels {max_pixels}", record)
            if max_side is not None and img.format == "JPEG" and max(w, h) > 2 * max_side:
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: far faster for huge photos.
                img.draft("RGB", (max_side, max_side))
            img.load()
    except DataError:
        raise
    except UnidentifiedImageError:
        head = data[:16]
        hint = " (looks like text)" if _looks_like_text(head) else ""
        raise DataError(name, f"not an image file{hint}: PIL cannot identify it", record) from None
    except Image.DecompressionBombError as exc:
        raise DataError(name, f"image too large: {exc}", record) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(name, f"corrupt or truncated image: {exc}", record) from None
    img = ImageOps.exif_transpose(img)
    img = to_rgb(img, name=name, record=record)
    if max_side is not None and max(img.size) > max_side:
        scale = max_side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.BILINEAR)
    return img


def to_rgb(img: Image.Image, name: str | Path = "<image>", record: object = None) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without clipping high-bit-depth data."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0  # 0..65535 -> 0..255
        else:
            lo, hi = float(arr.min()), float(arr.max())
            # 32-bit images have no fixed range: stretch what is there.
            arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        gray = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
        return gray.convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("L", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise DataError(name, f"unsupported image mode {mode}: {exc}", record) from None


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(32 <= b < 127 or b in (9, 10, 13) for b in head)

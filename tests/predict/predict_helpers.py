"""What the predictor tests share besides fixtures: the tiny vocabulary, answer list and image
sizes, and the drawing of a test scene."""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw

WORDS = ("a the red blue green yellow star circle square heart small big left right of what color is shape "
         "how many image has two there are shapes in").split()
ANSWERS = ["yes", "no", "red", "blue", "green", "two", "star", "circle"]
# (width, height): wide, tall and square images, as saved
SIZES = [(200, 120), (96, 160), (128, 128), (150, 90)]


def draw_scene(size: tuple[int, int], seed: int) -> Image.Image:
    """A few filled shapes on a plain background."""
    g = torch.Generator().manual_seed(seed)
    w, h = size
    image = Image.new("RGB", size, tuple(int(v) for v in torch.randint(0, 256, (3,), generator=g)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = int(torch.randint(0, w - 20, (), generator=g)), int(torch.randint(0, h - 20, (), generator=g))
        s = int(torch.randint(12, 30, (), generator=g))
        colour = tuple(int(v) for v in torch.randint(0, 256, (3,), generator=g))
        (draw.ellipse if seed % 2 else draw.rectangle)([x, y, x + s, y + s], fill=colour)
    return image

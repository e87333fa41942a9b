"""Pictures of predictions for a person to look at: boxes on the image, text under it, a row of
ranked images. Every function returns a new PIL image and leaves its inputs as they are."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = ["red", "lime", "blue", "yellow", "magenta", "cyan", "orange", "white"]
LINE = 14  # pixels per line of text (PIL's default bitmap font is 11 px high)


def draw_boxes(image: Image.Image, boxes: list[list[float]], labels: list[str],
               path: str | Path | None = None) -> Image.Image:
    """``image`` with each xyxy box (in its pixels) outlined and labelled, in turn colours;
    also written as a PNG to ``path`` when given."""
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    for k, (box, label) in enumerate(zip(boxes, labels)):
        c = COLOURS[k % len(COLOURS)]
        draw.rectangle(box, outline=c, width=2)
        tx, ty = box[0] + 2, max(0, box[1] - 11)
        w = draw.textlength(label)
        draw.rectangle([tx - 1, ty, tx + w + 1, ty + 10], fill="black")
        draw.text((tx, ty), label, fill=c)
    if path is not None:
        canvas.save(path, format="PNG")
    return canvas


def with_text(image: Image.Image, lines: list[str], min_width: int = 320, height: int | None = None) -> Image.Image:
    """``image`` (scaled to ``height`` px high when given) above ``lines`` of text, on white;
    lines wider than the picture are cut."""
    image = image.convert("RGB")
    if height is not None and image.height != height:
        image = image.resize((max(1, round(image.width * height / image.height)), height))
    width = max(min_width, image.width)
    panel = Image.new("RGB", (width, image.height + LINE * len(lines) + 6), "white")
    panel.paste(image, (0, 0))
    draw = ImageDraw.Draw(panel)
    chars = max(8, width // 6)  # the default font is about 6 px a character
    for k, line in enumerate(lines):
        draw.text((2, image.height + 3 + LINE * k), line if len(line) <= chars else line[:chars - 3] + "...", fill="black")
    return panel


def side_by_side(panels: list[Image.Image], title: str = "", gap: int = 4) -> Image.Image:
    """``panels`` in one row, top-aligned, under an optional ``title`` line."""
    top = LINE + 4 if title else 0
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (max(width, 1), top + max(p.height for p in panels)), "white")
    if title:
        ImageDraw.Draw(canvas).text((2, 2), title, fill="black")
    x = 0
    for p in panels:
        canvas.paste(p, (x, top))
        x += p.width + gap
    return canvas

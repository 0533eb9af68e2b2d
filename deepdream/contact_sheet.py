"""A labelled grid of images (one dream per model, per layer, ...)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .image_io import to_uint8

LABEL_HEIGHT = 22
PADDING = 6
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)


def contact_sheet(items: Sequence[tuple[str, np.ndarray]], cell: int = 256, columns: int | None = None) -> Image.Image:
    """Fit each (label, float RGB image) into a ``cell``-sized box, label it underneath, lay out in a grid."""
    if not items:
        raise ValueError("a contact sheet needs at least one image")
    columns = columns or min(len(items), max(1, math.ceil(math.sqrt(len(items)))))
    rows = math.ceil(len(items) / columns)
    width = columns * (cell + PADDING) + PADDING
    height = rows * (cell + LABEL_HEIGHT + PADDING) + PADDING
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)
    for index, (label, rgb) in enumerate(items):
        img = Image.fromarray(to_uint8(rgb))
        img.thumbnail((cell, cell), Image.Resampling.LANCZOS)
        col, row = index % columns, index // columns
        x0 = PADDING + col * (cell + PADDING)
        y0 = PADDING + row * (cell + LABEL_HEIGHT + PADDING)
        sheet.paste(img, (x0 + (cell - img.width) // 2, y0 + (cell - img.height) // 2))
        text_width = draw.textlength(label, font=font)
        draw.text((x0 + max(0, (cell - text_width) / 2), y0 + cell + 3), label, fill=TEXT, font=font)
    return sheet

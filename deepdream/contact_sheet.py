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
    """Fit each (label, float RGB image) into a ``cell``-pixel box, label it underneath, lay out in a grid.

    Rows are as tall as their tallest thumbnail, so landscape images leave no empty bands.
    """
    if not items:
        raise ValueError("a contact sheet needs at least one image")
    columns = columns or min(len(items), max(1, math.ceil(math.sqrt(len(items)))))
    thumbs = []
    for label, rgb in items:
        img = Image.fromarray(to_uint8(rgb))
        img.thumbnail((cell, cell), Image.Resampling.LANCZOS)
        thumbs.append((label, img))
    rows = [thumbs[i:i + columns] for i in range(0, len(thumbs), columns)]
    row_heights = [max(img.height for _, img in row) for row in rows]
    width = columns * (cell + PADDING) + PADDING
    height = sum(h + LABEL_HEIGHT + PADDING for h in row_heights) + PADDING
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)
    y0 = PADDING
    for row, row_height in zip(rows, row_heights):
        for col, (label, img) in enumerate(row):
            x0 = PADDING + col * (cell + PADDING)
            sheet.paste(img, (x0 + (cell - img.width) // 2, y0 + (row_height - img.height) // 2))
            text_width = draw.textlength(label, font=font)
            draw.text((x0 + max(0, (cell - text_width) / 2), y0 + row_height + 3), label, fill=TEXT, font=font)
        y0 += row_height + LABEL_HEIGHT + PADDING
    return sheet

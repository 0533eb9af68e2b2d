"""Transformation robustness for renders from noise (Lucid's ``standard_transforms``, lucid/optvis/transform).

Each step the network sees the rendered image padded, shifted, scaled and rotated a little, so
only patterns that survive all of these raise the objective: the render cannot exploit exact
pixel positions (the high-frequency "adversarial" look of an unconstrained render).

Lucid chains pad, jitter, random scale, random rotation and a second small jitter; after the
pad they are all affine maps of the plane, so they compose into one matrix per image, drawn on
the host from the render's seeded generator and applied as one differentiable bilinear
resampling (``affine_sample``) inside the compiled step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .errors import DreamError

#: Grey the padding is filled with: the middle of the sigmoid's range, like Lucid's constant pad.
PAD_VALUE = 0.5


@dataclass(frozen=True)
class Robustness:
    """Lucid's standard transforms: ``pad`` pixels of grey, a shift of up to ``jitter`` pixels
    before and ``jitter // 2`` after the scale and rotation, a scale drawn from ``scale_range``
    and a rotation of up to ``rotate`` degrees either way."""

    pad: int = 12
    jitter: int = 8
    scale_range: tuple[float, float] = (0.9, 1.1)
    rotate: float = 10.0

    def validate(self) -> None:
        if self.pad < 0:
            raise DreamError(f"--pad must be zero or positive (got {self.pad})")
        if self.jitter < 0:
            raise DreamError(f"--jitter must be zero or positive (got {self.jitter})")
        low, high = self.scale_range
        if not 0 < low <= high or not math.isfinite(high):
            raise DreamError(f"--scale-range needs 0 < LOW <= HIGH (got {low:g} {high:g}); 0.9 1.1 is typical")
        if not 0 <= self.rotate <= 180:
            raise DreamError(f"--rotate-range takes degrees from 0 to 180 (got {self.rotate:g}); 10 is typical")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` affine maps, (n, 2, 3) float32: output pixel (y, x, 1), centred, -> source (y, x), centred."""
        maps = np.zeros((n, 2, 3), np.float32)
        for i in range(n):
            before = rng.integers(-self.jitter, self.jitter + 1, size=2)
            after = rng.integers(-(self.jitter // 2), self.jitter // 2 + 1, size=2)
            scale = rng.uniform(*self.scale_range)
            angle = math.radians(rng.uniform(-self.rotate, self.rotate))
            cos, sin = math.cos(angle), math.sin(angle)
            # Output = R * s * (source + before) + after, inverted: source = R^T (output - after) / s - before.
            linear = np.array([[cos, sin], [-sin, cos]]) / scale
            maps[i, :, :2] = linear
            maps[i, :, 2] = -linear @ after - before
        return maps


NONE = Robustness(pad=0, jitter=0, scale_range=(1.0, 1.0), rotate=0.0)


def sampling_grid(height: int, width: int) -> mx.array:
    """Centred (y, x) coordinates of every pixel, (H, W, 2): an input of the compiled step, so the
    image size is never a constant baked into its kernels."""
    ys = np.arange(height, dtype=np.float32) - (height - 1) / 2
    xs = np.arange(width, dtype=np.float32) - (width - 1) / 2
    return mx.array(np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1))


def pad(x: mx.array, pixels: int) -> mx.array:
    if pixels == 0:
        return x
    return mx.pad(x, ((0, 0), (pixels, pixels), (pixels, pixels), (0, 0)), constant_values=PAD_VALUE)


def affine_sample(x: mx.array, maps: mx.array, grid: mx.array) -> mx.array:
    """Bilinear resampling of (N, H, W, C) ``x`` through per-image ``maps`` (``Robustness.sample``),
    same output size; positions outside the image take the nearest edge pixel."""
    n, h, w, c = x.shape
    oy, ox = grid[..., 0], grid[..., 1]
    lin = maps[:, :, None, None, :]                                        # (N, 2, 1, 1, 3)
    sy = lin[:, 0, ..., 0] * oy + lin[:, 0, ..., 1] * ox + lin[:, 0, ..., 2] + (h - 1) / 2
    sx = lin[:, 1, ..., 0] * oy + lin[:, 1, ..., 1] * ox + lin[:, 1, ..., 2] + (w - 1) / 2
    sy = mx.clip(sy, 0, h - 1)
    sx = mx.clip(sx, 0, w - 1)
    y0, x0 = mx.floor(sy), mx.floor(sx)
    wy, wx = (sy - y0)[..., None], (sx - x0)[..., None]
    y0i, x0i = y0.astype(mx.int32), x0.astype(mx.int32)
    y1i, x1i = mx.minimum(y0i + 1, h - 1), mx.minimum(x0i + 1, w - 1)
    base = (mx.arange(n, dtype=mx.int32) * (h * w))[:, None, None]
    flat = x.reshape(n * h * w, c)

    def at(yi: mx.array, xi: mx.array) -> mx.array:
        return mx.take(flat, (base + yi * w + xi).reshape(-1), axis=0).reshape(n, h, w, c)

    top = at(y0i, x0i) * (1 - wx) + at(y0i, x1i) * wx
    bottom = at(y1i, x0i) * (1 - wx) + at(y1i, x1i) * wx
    return top * (1 - wy) + bottom * wy


def transform(rgb: mx.array, pixels: int, maps: mx.array, grid: mx.array) -> mx.array:
    """Pad, then resample through ``maps`` (the whole of Lucid's standard transforms for one step)."""
    return affine_sample(pad(rgb, pixels), maps, grid)

"""Image-space operations of the dream step: jitter, gradient smoothing, Laplacian normalisation, resizing.

The MLX functions work on NHWC batches of one image and are written to be traced by
``mx.compile``: sizes come from array shapes, and per-step values (roll offsets, the
smoothing sigma) are arrays, so changing them does not recompile the step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import mlx.core as mx
import numpy as np
from PIL import Image

from fastlayers.blur import separable_blurs
from fastlayers.roll import roll_pad
from fastlayers.update import normalized_step as native_normalized_step

#: pytorch-deepdream's "magic" kernel size for the cascade smoothing.
SMOOTHING_KERNEL_SIZE = 9
#: Standard deviations of the three cascaded Gaussians, in units of the step's sigma.
CASCADE_SIGMAS = (0.5, 1.0, 2.0)
#: 2015 TF notebook: 5x5 binomial kernel of the Laplacian pyramid, and its default depth.
_BINOMIAL_5 = np.array([1.0, 4.0, 6.0, 4.0, 1.0], np.float32) / 16.0
LAP_LEVELS = 4


# -- jitter -----------------------------------------------------------------------------------

def roll_starts(height: int, width: int, shift: tuple[int, int]) -> tuple[mx.array, mx.array]:
    """Start offsets (row, column) that roll an (H, W) image by ``shift = (dy, dx)``, and that undo it.

    ``roll(x, start)`` reads the image from ``start`` on, wrapping around. The offsets are
    int32 arrays built on the host and passed to the compiled step as inputs: ``mx.roll`` (or
    ``% height`` inside the graph) would bake the offset or the size into the compiled
    kernels, and on CPU every new kernel costs seconds of C++ compilation.
    """
    dy, dx = int(shift[0]), int(shift[1])
    return (mx.array([(-dy) % height, (-dx) % width], dtype=mx.int32),
            mx.array([dy % height, dx % width], dtype=mx.int32))


def roll(x: mx.array, start: mx.array) -> mx.array:
    """Circular shift of (N, H, W, C) so that pixel ``start = (row, col)`` comes first (``roll_starts``).

    A dynamic slice of the image repeated twice: rows are one contiguous slice of the doubled
    *flat* image (the C++ side copies whole rows), columns one of the image doubled along W.
    Gathering with index arrays (``mx.take``) instead goes element by element, several times slower.
    """
    if (fast := roll_pad(x, start, 0)) is not None:
        return fast                     # one copy on all threads (fastlayers/native/roll.cpp)
    n, h, w, c = x.shape
    flat = x.reshape(-1)
    doubled = mx.concatenate([flat, flat])
    x = mx.slice(doubled, start[0:1] * (w * c), (0,), (n * h * w * c,)).reshape(n, h, w, c)
    return mx.slice(mx.concatenate([x, x], axis=2), start[1:2], (2,), (n, h, w, c))


#: ``roll``'s start that leaves the image as it is.
_NO_ROLL = mx.zeros((2,), dtype=mx.int32)


def smoothing_sigma(step: int, steps: int, smoothing: float) -> float:
    """pytorch-deepdream's schedule: blur grows from ``smoothing`` to ``smoothing + 2`` over the octave."""
    return (step + 1) / steps * 2.0 + smoothing


# -- gradient smoothing (pytorch-deepdream's CascadeGaussianSmoothing) -----------------------

def _filter_axis(x: mx.array, taps: mx.array | np.ndarray, axis: int, mode: str) -> mx.array:
    """Correlate (N, H, W, C) along ``axis`` (1 or 2) with an odd-length 1-D kernel, output the same size.

    Written as shifted multiply-adds over slices: on CPU, MLX's convolution with a single
    input channel is about two orders of magnitude slower than this.
    """
    pad = len(taps) // 2
    n = x.shape[axis]
    if mode == "reflect":
        x = _reflect_pad_axis(x, pad, axis)
    else:
        widths = [(0, 0)] * 4
        widths[axis] = (pad, pad)
        x = mx.pad(x, widths)
    return _correlate_axis(x, taps, axis, n)


def _correlate_axis(x: mx.array, taps: mx.array | np.ndarray, axis: int, n: int,
                    out: mx.array | None = None) -> mx.array:
    """Valid correlation of an already padded (N, H, W, C) along ``axis``: ``n`` outputs, added
    to ``out`` if given (one chain of adds, which mx.compile fuses into one pass)."""
    if isinstance(taps, np.ndarray):  # constants: Python floats (numpy scalars would hijack the multiply)
        taps = [float(t) for t in taps]
    index = [slice(None)] * 4
    for i in range(len(taps)):
        index[axis] = slice(i, i + n)
        term = taps[i] * x[tuple(index)]
        out = term if out is None else out + term
    return out


def _reflect_pad_axis(x: mx.array, pad: int, axis: int) -> mx.array:
    """torch ``mode='reflect'`` padding along one axis (the edge sample is not repeated)."""
    n = x.shape[axis]
    p = min(pad, n - 1)
    index = [slice(None)] * 4
    index[axis] = slice(p, 0, -1) if p else slice(0, 0)
    before = x[tuple(index)]
    stop = n - 2 - p
    index[axis] = slice(n - 2, stop if stop >= 0 else None, -1) if p else slice(0, 0)
    after = x[tuple(index)]
    x = mx.concatenate([before, x, after], axis=axis)
    if p < pad:  # a side shorter than the kernel: repeat the edge for the rest
        widths = [(0, 0)] * 4
        widths[axis] = (pad - p, pad - p)
        x = mx.pad(x, widths, mode="edge")
    return x


def reflect_indices(start: int, stop: int, length: int) -> np.ndarray:
    """Indices ``start..stop-1`` of an axis of ``length`` samples, reflected at both ends as torch's
    ``mode='reflect'`` pads (-1 -> 1, length -> length - 2): a window reaching past the image edge
    reads what ``_reflect_pad_axis`` would have padded there."""
    index = np.abs(np.arange(start, stop))
    return np.where(index > length - 1, 2 * (length - 1) - index, index)


def gaussian_taps(sigma: mx.array, size: int = SMOOTHING_KERNEL_SIZE) -> mx.array:
    """Normalised 1-D Gaussian of std ``sigma`` (an array, so a compiled step takes it as input)."""
    grid = mx.arange(size, dtype=mx.float32) - (size - 1) / 2
    g = mx.exp(-(grid * grid) / (2 * sigma * sigma))
    return g / g.sum()


def cascade_smooth(grad: mx.array, sigma: mx.array, size: int = SMOOTHING_KERNEL_SIZE) -> mx.array:
    """pytorch-deepdream's CascadeGaussianSmoothing: mean of three Gaussian blurs, std ``[0.5, 1, 2] * sigma``.

    Each blur is separable (a 2-D Gaussian is the outer product of two 1-D ones), reflect-padded.
    The image is padded once for all six 1-D passes: a vertical blur of the padded image is
    still correctly padded left and right, and the three horizontal passes add up in one
    fused pass (faster than padding and summing per blur; docs/performance.md, item 5).
    """
    pad = size // 2
    padded = roll_pad(grad, _NO_ROLL, pad)          # natively, in one copy on all threads
    if padded is None:
        padded = _reflect_pad_axis(_reflect_pad_axis(grad, pad, 1), pad, 2)
    return cascade_smooth_padded(padded, sigma, size)


def cascade_smooth_padded(padded: mx.array, sigma: mx.array, size: int = SMOOTHING_KERNEL_SIZE) -> mx.array:
    """``cascade_smooth`` of an array already padded by ``size // 2`` on every side (the output is that
    much smaller): a tile padded with its neighbours' pixels smooths exactly as the whole image would."""
    taps = [gaussian_taps(sigma * coeff, size) for coeff in CASCADE_SIGMAS]
    if (fast := separable_blurs(padded, mx.stack(taps))) is not None:
        return fast                     # the same sums on all threads (fastlayers/native/blur.cpp)
    _, height, width, _ = padded.shape
    height, width = height - 2 * (size // 2), width - 2 * (size // 2)
    out = None
    for blur in taps:
        out = _correlate_axis(_correlate_axis(padded, blur, 1, height), blur, 2, width, out)
    return out / len(CASCADE_SIGMAS)


# -- Laplacian-pyramid normalisation (2015 TF DeepDream notebook) ------------------------------

def _blur5(x: mx.array, gain: float = 1.0) -> mx.array:
    taps = _BINOMIAL_5 * gain
    return _filter_axis(_filter_axis(x, taps, 1, "zeros"), taps, 2, "zeros")


def _lap_down(x: mx.array) -> mx.array:
    """Blur with the 5x5 binomial kernel and keep every second sample (size ceil(n / 2))."""
    return _blur5(x)[:, ::2, ::2]


def _lap_up(x: mx.array, height: int, width: int) -> mx.array:
    """Inverse of ``_lap_down`` (the notebook's conv2d_transpose): zeros between samples, blur with 4x the kernel."""
    n, h, w, c = x.shape
    rows = mx.stack([x, mx.zeros_like(x)], axis=2).reshape(n, 2 * h, w, c)
    up = mx.stack([rows, mx.zeros_like(rows)], axis=3).reshape(n, 2 * h, 2 * w, c)
    return _blur5(up[:, :height, :width], gain=2.0)  # 2 per axis: the 2-D kernel gets 4x


def lap_normalize(grad: mx.array, levels: int = LAP_LEVELS, eps: float = 1e-10,
                  inv_counts: list[mx.array] | None = None) -> mx.array:
    """Split (N, H, W, C) into ``levels`` band-pass layers + a low-pass residual, scale each to unit RMS, merge.

    Equalising the bands stops the high frequencies (which dominate raw gradients) from
    turning the dream into noise, so larger structures appear at every scale.
    ``inv_counts`` (from ``lap_inverse_counts``) keeps a compiled caller size-independent.
    """
    def rms(x: mx.array, level: int) -> mx.array:
        inv = None if inv_counts is None else inv_counts[level]
        return mx.maximum(mx.sqrt(_mean(x * x, inv)), eps)

    bands = []
    current = grad
    for _ in range(levels):
        if min(current.shape[1], current.shape[2]) < 2:
            break
        low = _lap_down(current)
        bands.append(current - _lap_up(low, current.shape[1], current.shape[2]))
        current = low
    merged = current / rms(current, len(bands))
    for level in range(len(bands) - 1, -1, -1):
        band = bands[level]
        merged = _lap_up(merged, band.shape[1], band.shape[2]) + band / rms(band, level)
    return merged


#: Added to the gradient's spread before dividing by it (whole-image and tiled normalisation alike).
NORMALIZE_EPS = 1e-8


def _mean(x: mx.array, inv_count: mx.array | None) -> mx.array:
    # Inside mx.compile a plain mean bakes 1/size into the generated kernel (one C++ compile per
    # image size on CPU); passing the reciprocal in keeps the compiled step size-independent.
    return mx.mean(x) if inv_count is None else mx.sum(x) * inv_count


def normalize_std(grad: mx.array, inv_count: mx.array | None = None, eps: float = NORMALIZE_EPS) -> mx.array:
    """pytorch-deepdream: zero mean, unit standard deviation over the whole gradient."""
    centred = grad - _mean(grad, inv_count)
    return centred / (mx.sqrt(_mean(centred * centred, inv_count)) + eps)


def normalize_mean_abs(grad: mx.array, inv_count: mx.array | None = None, eps: float = NORMALIZE_EPS) -> mx.array:
    """2015 Caffe notebook: ``g / mean(|g|)`` (its step is then ``step_size * g / mean|g|``)."""
    return grad / (_mean(mx.abs(grad), inv_count) + eps)


def normalized_step(state: mx.array, grad: mx.array, scale: mx.array, inv_count: mx.array | None, mode: str,
                    clamp: Callable[[mx.array], mx.array],
                    bounds: tuple[mx.array, mx.array] | None = None) -> mx.array:
    """The step's update: ``clamp(state + scale * g)``, ``g`` the gradient normalised as ``mode``
    says (``normalize_std`` or, for "mean-abs", ``normalize_mean_abs``). Where ``clamp`` clips each
    channel to ``bounds`` (low, high), the native kernel does it all in two passes on all threads
    (fastlayers/native/update.cpp); this MLX form is the fallback and the reference."""
    if bounds is not None and (fast := native_normalized_step(state, grad, scale, *bounds, mode)) is not None:
        return fast
    normalize = normalize_mean_abs if mode == "mean-abs" else normalize_std
    return clamp(state + scale * normalize(grad, inv_count))


def lap_inverse_counts(height: int, width: int, channels: int = 3, levels: int = LAP_LEVELS) -> list[mx.array]:
    """1 / element count of each band of ``lap_normalize`` (finest first, the low-pass residual last)."""
    counts = []
    for _ in range(levels):
        if min(height, width) < 2:
            break
        counts.append(height * width * channels)
        height, width = (height + 1) // 2, (width + 1) // 2
    counts.append(height * width * channels)
    return [mx.array(1.0 / c, dtype=mx.float32) for c in counts]


# -- resizing (host side, once per octave) ------------------------------------------------------

def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize float (H, W, C) to (height, width, C): Lanczos (antialiased) down, bicubic up.

    Pillow's float ("F") mode resamples each channel without quantising to 8 bits, so detail
    carried between octaves keeps its sign and precision.
    """
    if image.shape[:2] == (height, width):
        return image.astype(np.float32, copy=True)
    down = height * width < image.shape[0] * image.shape[1]
    method = Image.Resampling.LANCZOS if down else Image.Resampling.BICUBIC
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[..., i], np.float32), mode="F")
                   .resize((width, height), method), np.float32)
        for i in range(image.shape[2])
    ]
    return np.stack(channels, axis=-1)


def octave_sizes(height: int, width: int, octaves: int, scale: float) -> list[tuple[int, int]]:
    """Sizes from the smallest octave to the full image: ``full / scale**k`` for k = octaves-1 .. 0."""
    return [(max(1, round(height / scale ** k)), max(1, round(width / scale ** k)))
            for k in range(octaves - 1, -1, -1)]


def max_octaves(height: int, width: int, scale: float, min_size: int, wanted: int) -> int:
    """The most octaves (at most ``wanted``, at least 1) whose smallest one keeps both sides >= ``min_size``."""
    count = max(1, wanted)
    while count > 1 and min(octave_sizes(height, width, count, scale)[0]) < min_size:
        count -= 1
    return count


def tile_bounds(length: int, tile: int) -> list[tuple[int, int]]:
    """Split ``length`` into ceil(length / tile) nearly equal spans (sizes differ by at most one).

    Equal spans (rather than full tiles plus a sliver) keep every tile big enough for the
    network and limit the distinct tile shapes, hence compiled variants, to two per axis.
    """
    count = max(1, math.ceil(length / tile))
    edges = [round(i * length / count) for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))

"""Pooling ops with torchvision's exact semantics (NHWC), shared by the architectures.

MLX's nn.MaxPool2d has no ``ceil_mode`` and its padding differs; torchvision's GoogLeNet and
Inception rely on ``ceil_mode=True`` and VGG/AlexNet on adaptive average pooling, so the
ports need these to match torchvision on any input size.
"""

from __future__ import annotations

import math

import mlx.core as mx


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else v


def _pool_out(size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    num = size + 2 * p - k
    out = (math.ceil(num / s) if ceil_mode else num // s) + 1
    # torch: the last window must start inside the input or left padding
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _windows(x: mx.array, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int],
             ceil_mode: bool, pad_value: float) -> tuple[mx.array, int, int]:
    """Pad x (N, H, W, C) so that every window lies inside; return it with the output size."""
    n, h, w, c = x.shape
    oh = _pool_out(h, k[0], s[0], p[0], ceil_mode)
    ow = _pool_out(w, k[1], s[1], p[1], ceil_mode)
    need_h = (oh - 1) * s[0] + k[0]
    need_w = (ow - 1) * s[1] + k[1]
    pad_h = (p[0], max(0, need_h - h - p[0]))
    pad_w = (p[1], max(0, need_w - w - p[1]))
    if any(pad_h + pad_w):
        x = mx.pad(x, [(0, 0), pad_h, pad_w, (0, 0)], constant_values=pad_value)
    return x, oh, ow


def _strided_windows(x: mx.array, k: tuple[int, int], s: tuple[int, int], oh: int, ow: int) -> mx.array:
    """View (N, oh, ow, kh, kw, C) of the pooling windows, via as_strided (no copy)."""
    n, h, w, c = x.shape
    x = mx.contiguous(x)
    strides = [h * w * c, s[0] * w * c, s[1] * c, w * c, c, 1]
    return mx.as_strided(x, (n, oh, ow, k[0], k[1], c), strides)


def max_pool2d(x: mx.array, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
               padding: int | tuple[int, int] = 0, ceil_mode: bool = False) -> mx.array:
    """torch.nn.functional.max_pool2d on NHWC input (padding counts as -inf)."""
    k = _pair(kernel_size)
    s = _pair(stride if stride is not None else kernel_size)
    p = _pair(padding)
    x, oh, ow = _windows(x, k, s, p, ceil_mode, -float("inf"))
    return _strided_windows(x, k, s, oh, ow).max(axis=(3, 4))


def avg_pool2d(x: mx.array, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
               padding: int | tuple[int, int] = 0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> mx.array:
    """torch.nn.functional.avg_pool2d on NHWC input."""
    k = _pair(kernel_size)
    s = _pair(stride if stride is not None else kernel_size)
    p = _pair(padding)
    n, h, w, c = x.shape
    xp, oh, ow = _windows(x, k, s, p, ceil_mode, 0.0)
    total = _strided_windows(xp, k, s, oh, ow).sum(axis=(3, 4))
    # Divisor per output cell, as torch computes it: the window clipped to the padded
    # input (count_include_pad) or to the real input (not).
    lo_h = mx.arange(oh) * s[0] - p[0]
    lo_w = mx.arange(ow) * s[1] - p[1]
    if count_include_pad:
        cnt_h = mx.minimum(lo_h + k[0], h + p[0]) - lo_h
        cnt_w = mx.minimum(lo_w + k[1], w + p[1]) - lo_w
    else:
        cnt_h = mx.minimum(lo_h + k[0], h) - mx.maximum(lo_h, 0)
        cnt_w = mx.minimum(lo_w + k[1], w) - mx.maximum(lo_w, 0)
    divisor = (cnt_h[:, None] * cnt_w[None, :]).astype(x.dtype)
    return total / divisor[None, :, :, None]


def adaptive_avg_pool2d(x: mx.array, output_size: int | tuple[int, int]) -> mx.array:
    """torch.nn.functional.adaptive_avg_pool2d on NHWC input (torch's bin edges)."""
    oh, ow = _pair(output_size)
    n, h, w, c = x.shape
    if (h, w) == (oh, ow):
        return x
    if oh == 1 and ow == 1:
        return x.mean(axis=(1, 2), keepdims=True)
    rows = []
    for i in range(oh):
        h0, h1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        cols = []
        for j in range(ow):
            w0, w1 = (j * w) // ow, -((-(j + 1) * w) // ow)
            cols.append(x[:, h0:h1, w0:w1, :].mean(axis=(1, 2)))
        rows.append(mx.stack(cols, axis=1))
    return mx.stack(rows, axis=1)


def global_avg_pool(x: mx.array) -> mx.array:
    """(N, H, W, C) -> (N, C)."""
    return x.mean(axis=(1, 2))

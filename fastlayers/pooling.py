"""Pooling with torchvision's exact semantics (NHWC), fast on MLX's CPU backend.

MLX's nn.MaxPool2d has no ``ceil_mode`` and its padding differs; torchvision's GoogLeNet and
Inception rely on ``ceil_mode=True`` and VGG/AlexNet on adaptive average pooling, so the
ports need these to match torchvision on any input size.

On CPU MLX's own gradient of a pooling window view is a scatter, so ``max_pool2d`` and
``avg_pool2d`` carry their own gradients (``mx.custom_function``), or run as native primitives
(``fastlayers/native/pooling.cpp``) where those are built; the MLX forms below are the fallback:

- Pooling gradients use the gather form (``fastlayers.windows.scatter_taps``); windows that
  tile the input (VGG's 2x2/2) take one elementwise pass, and stride-1 pools (GoogLeNet's and
  Inception's branch pools) run as two separable 1-D passes over contiguous slices
  (``_SeparablePool``). Max pooling routes each window's gradient to its first maximal
  element, as torch does.

A property of MLX 0.32's CPU backend shapes this: a fused elementwise kernel over contiguous
inputs is one flat loop the C++ compiler vectorises, over strided views a nest of loops
stepping one pointer per input per element (several times slower with many inputs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from types import ModuleType

import mlx.core as mx

from . import native
from .windows import Pair, gather_padding, on_cpu, one, pad_window_grid, pair, scatter_taps

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


class _SeparablePool:
    """Stride-1 pooling of one image as two 1-D passes over *contiguous* slices.

    A kh x kw window max (or sum) is a vertical max of horizontal maxes. With the padded image
    flattened to (pixels, C), the horizontal window at flat pixel q is pixels q .. q + kw - 1
    and the vertical one q, q + Wp, ..., so every tap is a contiguous slice of a flat array
    (results on the padded width; the last kw - 1 columns of each row wrap and are dropped).
    This matters on MLX 0.32's CPU backend: fused elementwise kernels run SIMD loops on
    contiguous inputs but walk strided views one scalar at a time, with one pointer per input;
    a pool gradient over nine strided views is slower than these two passes over slices.
    For max pooling the two passes also pick torch's element on ties: the first row holding
    the window maximum, then the first column in it, i.e. the first maximum in row-major order.
    """

    def __init__(self, hw: Pair, k: Pair, p: Pair) -> None:
        (h, w), (kh, kw), (ph, pw) = hw, k, p
        self.k, self.p, self.hw = k, p, hw
        self.oh, self.ow = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
        self.wp = w + 2 * pw
        self.hp = h + 2 * ph + 1                      # a spare row: the last horizontal windows run past
        self.across = (self.oh + kh - 1) * self.wp    # horizontal results the vertical pass reads
        self.rows = self.oh * self.wp                 # outputs, on the padded width

    def flat_input(self, x: mx.array, pad_value: float) -> mx.array:
        (ph, pw), (h, _) = self.p, self.hw
        xp = mx.pad(x, [(0, 0), (ph, self.hp - h - ph), (pw, pw), (0, 0)], constant_values=pad_value)
        return xp.reshape(self.hp * self.wp, x.shape[-1])

    def horizontal(self, flat: mx.array) -> list[mx.array]:
        return [flat[j:j + self.across] for j in range(self.k[1])]

    def vertical(self, across: mx.array) -> list[mx.array]:
        return [across[i * self.wp:i * self.wp + self.rows] for i in range(self.k[0])]

    def crop(self, grid: mx.array) -> mx.array:
        """(oh * Wp, C) -> (1, oh, ow, C)."""
        return mx.contiguous(grid.reshape(1, self.oh, self.wp, -1)[:, :, :self.ow, :])

    def back_vertical(self, g: mx.array, first: mx.array | None) -> mx.array:
        """Gradient on the horizontal results (``across`` rows) from g (1, oh, ow, C); ``first``
        (oh * Wp, C) names the tap each output took (max), None sends g to every tap (sum)."""
        kh = self.k[0]
        g = mx.pad(g, [(0, 0), (kh - 1, kh - 1), (0, self.wp - self.ow), (0, 0)]).reshape(-1, g.shape[-1])
        if first is not None:
            rim = (kh - 1) * self.wp                  # the kh - 1 image rows g got on each side
            first = mx.pad(first, [(rim, rim), (0, 0)], constant_values=-1) if kh > 1 else first
        first_row = kh - 1
        return _gather_shifted(g, first, [(first_row - i) * self.wp for i in range(kh)], self.across)

    def back_horizontal(self, g_across: mx.array, first: mx.array | None) -> mx.array:
        """Gradient on the padded input, cropped to (1, H, W, C), from the horizontal results'."""
        kw = self.k[1]
        g = mx.pad(g_across, [(kw - 1, kw - 1), (0, 0)]) if kw > 1 else g_across
        if first is not None and kw > 1:
            first = mx.pad(first, [(kw - 1, kw - 1), (0, 0)], constant_values=-1)
        size = self.across + kw - 1
        flat = _gather_shifted(g, first, [kw - 1 - j for j in range(kw)], size)
        flat = mx.pad(flat, [(0, self.hp * self.wp - size), (0, 0)])
        (ph, pw), (h, w) = self.p, self.hw
        return mx.contiguous(flat.reshape(1, self.hp, self.wp, -1)[:, ph:ph + h, pw:pw + w, :])


def _gather_shifted(g: mx.array, first: mx.array | None, starts: list[int], size: int) -> mx.array:
    """sum_t g[starts[t] : starts[t] + size], keeping only rows whose ``first`` equals t (if given)."""
    total = None
    for t, start in enumerate(starts):
        term = g[start:start + size]
        if first is not None:
            term = mx.where(first[start:start + size] == t, term, 0.0)
        total = term if total is None else total + term
    return total


def _first_tap(taps: list[mx.array], best: mx.array) -> mx.array:
    """Index of the first tap equal to ``best``, elementwise (torch's tie rule)."""
    first = mx.full(best.shape, len(taps), mx.int32)
    for t in reversed(range(len(taps))):
        first = mx.where(taps[t] == best, t, first)
    return first


def _reduce(taps: list[mx.array], op: Callable[[mx.array, mx.array], mx.array]) -> mx.array:
    result = taps[0]
    for tap in taps[1:]:
        result = op(result, tap)
    return result


def _flat_max_pool(k: Pair, p: Pair) -> Callable[[mx.array], mx.array]:
    """Stride-1 max pooling of one image (GoogLeNet's inception branch pool)."""
    def passes(x: mx.array) -> tuple[_SeparablePool, list[mx.array], mx.array, list[mx.array], mx.array]:
        pool = _SeparablePool(x.shape[1:3], k, p)
        horizontal = pool.horizontal(pool.flat_input(x, -float("inf")))
        across = _reduce(horizontal, mx.maximum)
        vertical = pool.vertical(across)
        return pool, horizontal, across, vertical, _reduce(vertical, mx.maximum)

    @mx.custom_function
    def pool(x: mx.array) -> mx.array:
        geometry, _, _, _, best = passes(x)
        return geometry.crop(best)

    @pool.vjp
    def pool_vjp(primals: mx.array, cotangent: mx.array, output: mx.array) -> mx.array:
        x, g = one(primals), one(cotangent)
        geometry, horizontal, across, vertical, best = passes(x)
        g_across = geometry.back_vertical(g, _first_tap(vertical, best))
        return geometry.back_horizontal(g_across, _first_tap(horizontal, across))

    return pool


def _flat_avg_pool(k: Pair, p: Pair, count_include_pad: bool) -> Callable[[mx.array], mx.array]:
    """Stride-1 average pooling of one image (Inception v3's branch pool)."""
    def divisor(x: mx.array, geometry: _SeparablePool) -> mx.array:
        h, w = x.shape[1:3]
        return _avg_divisor(h, w, geometry.oh, geometry.ow, k, (1, 1), p, count_include_pad, x.dtype)

    @mx.custom_function
    def pool(x: mx.array) -> mx.array:
        geometry = _SeparablePool(x.shape[1:3], k, p)
        across = _reduce(geometry.horizontal(geometry.flat_input(x, 0.0)), mx.add)
        return geometry.crop(_reduce(geometry.vertical(across), mx.add)) / divisor(x, geometry)

    @pool.vjp
    def pool_vjp(primals: mx.array, cotangent: mx.array, output: mx.array) -> mx.array:
        x, g = one(primals), one(cotangent)
        geometry = _SeparablePool(x.shape[1:3], k, p)
        g_across = geometry.back_vertical(g / divisor(x, geometry), None)
        return geometry.back_horizontal(g_across, None)

    return pool


@lru_cache(maxsize=None)
def _flat_pool_function(kind: str, k: Pair, p: Pair, count_include_pad: bool) -> Callable[[mx.array], mx.array]:
    """The stride-1 pooling (ceil_mode changes nothing at stride 1) as a cached custom function."""
    return _flat_max_pool(k, p) if kind == "max" else _flat_avg_pool(k, p, count_include_pad)


@lru_cache(maxsize=None)
def _max_pool_function(k: Pair, s: Pair, p: Pair, ceil_mode: bool) -> Callable[[mx.array], mx.array]:
    def windows(x: mx.array) -> tuple[mx.array, mx.array]:
        xp, oh, ow = _windows(x, k, s, p, ceil_mode, -float("inf"))
        return xp, _strided_windows(xp, k, s, oh, ow)

    @mx.custom_function
    def pool(x: mx.array) -> mx.array:
        return windows(x)[1].max(axis=(3, 4))

    @pool.vjp
    def pool_vjp(primals: mx.array, cotangent: mx.array, output: mx.array) -> mx.array:
        x, g, out = one(primals), one(cotangent), one(output)
        kh, kw = k
        xp, win = windows(x)
        # The tap holding each window's maximum, the first in row-major order on ties (torch's
        # rule). int32, not uint8: MLX's fused kernels run mixed-width types twice as slowly.
        first = _first_tap([win[:, :, :, t // kw, t % kw, :] for t in range(kh * kw)], out)
        if k == s:
            dxp = _non_overlapping(lambda taps: mx.where(first[:, :, None, :, None, :] == taps,
                                                         g[:, :, None, :, None, :], 0.0), k, g)
        else:
            widths = gather_padding(k, s, out.shape[1:3], xp.shape[1:3])
            gp, firstp = pad_window_grid(g, widths), pad_window_grid(first, widths, -1)
            dxp = scatter_taps(lambda i, j, rows, cols: mx.where(firstp[:, rows, cols] == i * kw + j,
                                                                  gp[:, rows, cols], 0.0),
                                k, s, out.shape[1:3], xp.shape[1:3], g)
        return _crop_padding(dxp, p, x.shape[1:3])

    return pool


def _non_overlapping(block_value: Callable[[mx.array], mx.array], k: Pair, like: mx.array) -> mx.array:
    """Gradient of a pooling whose windows tile the input (kernel == stride, VGG's 2x2/2): each
    pixel has one window, so it is one elementwise pass over the (N, oh, kh, ow, kw, C) view of
    the window grid. ``block_value(taps)`` gets the tap index (i * kw + j) of every view
    position and returns the view's values. Returns (N, oh * kh, ow * kw, C)."""
    kh, kw = k
    n, oh, ow, c = like.shape
    taps = mx.arange(kh)[:, None] * kw + mx.arange(kw)[None, :]
    value = block_value(taps[None, None, :, None, :, None])
    value = mx.broadcast_to(value, (n, oh, kh, ow, kw, c))
    return value.reshape(n, oh * kh, ow * kw, c)


def _crop_padding(dxp: mx.array, p: Pair, hw: Pair) -> mx.array:
    """The input's (H, W) region of a gradient on the padded grid, zero-extended if the windows
    stopped short of the input's last rows/columns (floor mode drops them)."""
    extra_h = max(0, p[0] + hw[0] - dxp.shape[1])
    extra_w = max(0, p[1] + hw[1] - dxp.shape[2])
    if extra_h or extra_w:
        dxp = mx.pad(dxp, [(0, 0), (0, extra_h), (0, extra_w), (0, 0)])
    return dxp[:, p[0]:p[0] + hw[0], p[1]:p[1] + hw[1], :]


def _pool_args(kernel_size: int | Pair, stride: int | Pair | None, padding: int | Pair) -> tuple[Pair, Pair, Pair]:
    """(kernel, stride, padding) as pairs; no stride means the kernel's, as in torch."""
    return pair(kernel_size), pair(stride if stride is not None else kernel_size), pair(padding)


def _native_pool(x: mx.array, k: Pair, s: Pair, p: Pair, ceil_mode: bool) -> tuple[ModuleType, Pair] | None:
    """The native kernels and the output size for a pooling of x, or None to use the MLX forms
    (no kernels for x, or an empty output, which the native primitives do not make)."""
    kernels = native.for_array(x)
    out_hw = (_pool_out(x.shape[1], k[0], s[0], p[0], ceil_mode), _pool_out(x.shape[2], k[1], s[1], p[1], ceil_mode))
    if kernels is None or min(out_hw) < 1:
        return None
    return kernels, out_hw


def max_pool2d(x: mx.array, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
               padding: int | tuple[int, int] = 0, ceil_mode: bool = False) -> mx.array:
    """torch.nn.functional.max_pool2d on NHWC input (padding counts as -inf)."""
    k, s, p = _pool_args(kernel_size, stride, padding)
    if (native_pool := _native_pool(x, k, s, p, ceil_mode)) is not None:
        # fastlayers/native/pooling.cpp: each window scanned once, the gradient sent straight to
        # the winner
        return native_pool[0].max_pool2d(x, *k, *s, *p, *native_pool[1])
    if s == (1, 1) and x.shape[0] == 1 and on_cpu():
        return _flat_pool_function("max", k, p, True)(x)
    return _max_pool_function(k, s, p, ceil_mode)(x)


def _avg_divisor(h: int, w: int, oh: int, ow: int, k: Pair, s: Pair, p: Pair,
                 count_include_pad: bool, dtype: mx.Dtype) -> mx.array:
    """Divisor per output cell, as torch computes it: the window clipped to the padded input
    (count_include_pad) or to the real input (not). Shape (1, oh, ow, 1)."""
    lo_h = mx.arange(oh) * s[0] - p[0]
    lo_w = mx.arange(ow) * s[1] - p[1]
    if count_include_pad:
        cnt_h = mx.minimum(lo_h + k[0], h + p[0]) - lo_h
        cnt_w = mx.minimum(lo_w + k[1], w + p[1]) - lo_w
    else:
        cnt_h = mx.minimum(lo_h + k[0], h) - mx.maximum(lo_h, 0)
        cnt_w = mx.minimum(lo_w + k[1], w) - mx.maximum(lo_w, 0)
    return (cnt_h[:, None] * cnt_w[None, :]).astype(dtype)[None, :, :, None]


@lru_cache(maxsize=None)
def _avg_pool_function(k: Pair, s: Pair, p: Pair, ceil_mode: bool,
                       count_include_pad: bool) -> Callable[[mx.array], mx.array]:
    @mx.custom_function
    def pool(x: mx.array) -> mx.array:
        n, h, w, c = x.shape
        xp, oh, ow = _windows(x, k, s, p, ceil_mode, 0.0)
        total = _strided_windows(xp, k, s, oh, ow).sum(axis=(3, 4))
        return total / _avg_divisor(h, w, oh, ow, k, s, p, count_include_pad, x.dtype)

    @pool.vjp
    def pool_vjp(primals: mx.array, cotangent: mx.array, output: mx.array) -> mx.array:
        x, g = one(primals), one(cotangent)
        n, h, w, c = x.shape
        oh, ow = g.shape[1:3]
        # the forward's padded size (``_windows``): windows never read past it
        padded_hw = (max(h + p[0], (oh - 1) * s[0] + k[0]), max(w + p[1], (ow - 1) * s[1] + k[1]))
        share = g / _avg_divisor(h, w, oh, ow, k, s, p, count_include_pad, g.dtype)
        if k == s:
            dxp = _non_overlapping(lambda taps: share[:, :, None, :, None, :], k, g)
        else:
            sharep = pad_window_grid(share, gather_padding(k, s, (oh, ow), padded_hw))
            dxp = scatter_taps(lambda i, j, rows, cols: sharep[:, rows, cols], k, s, (oh, ow), padded_hw, g)
        return _crop_padding(dxp, p, (h, w))

    return pool


def avg_pool2d(x: mx.array, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
               padding: int | tuple[int, int] = 0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> mx.array:
    """torch.nn.functional.avg_pool2d on NHWC input."""
    k, s, p = _pool_args(kernel_size, stride, padding)
    if (native_pool := _native_pool(x, k, s, p, ceil_mode)) is not None:
        # fastlayers/native/pooling.cpp: one pass per window, forward and gradient (Inception's
        # 3x3/1 branch pools are where this matters)
        return native_pool[0].avg_pool2d(x, *k, *s, *p, *native_pool[1], count_include_pad)
    if s == (1, 1) and x.shape[0] == 1 and on_cpu():
        return _flat_pool_function("avg", k, p, count_include_pad)(x)
    return _avg_pool_function(k, s, p, ceil_mode, count_include_pad)(x)


def adaptive_avg_pool2d(x: mx.array, output_size: int | tuple[int, int]) -> mx.array:
    """torch.nn.functional.adaptive_avg_pool2d on NHWC input (torch's bin edges)."""
    oh, ow = pair(output_size)
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

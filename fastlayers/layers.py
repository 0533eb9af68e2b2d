"""Convolution and pooling with torchvision's exact semantics (NHWC), fast on MLX's CPU backend.

MLX's nn.MaxPool2d has no ``ceil_mode`` and its padding differs; torchvision's GoogLeNet and
Inception rely on ``ceil_mode=True`` and VGG/AlexNet on adaptive average pooling, so the
ports need these to match torchvision on any input size.

Dreaming differentiates every layer w.r.t. its input, and on CPU MLX's own gradients of these
ops are slow (``bench.py --profile`` shows where; docs/performance.md has the history): the
input gradient of a strided convolution takes MLX's naive convolution loop, the gradient of a
pooling window view is a scatter, and even a plain 3x3 convolution spends more time building its im2col matrix than in the matrix product.
So ``conv2d``, ``max_pool2d`` and ``avg_pool2d`` carry their own gradients (``mx.custom_function``),
or run as native primitives (``fastlayers/native``: the stride-1 convolution in ``conv.cpp``, its 3x3
layers in ``winograd.cpp``, both poolings in ``pooling.cpp``) where those are built; the MLX forms below are the fallback:

- A stride-1 convolution is a sum of kh*kw matrix products over *shifted views* of the padded
  input flattened to (pixels, channels): shifting the flat view by one row of the padded image
  (or one pixel) is a contiguous slice, so no im2col copy is made (the few outputs that wrap
  around the padded width are computed and dropped).
- The input gradient is the same shifted-product correlation with the flipped kernel, or, for
  1x1, strided and few-channel (RGB input) layers, one product with the whole kernel followed
  by a gather-form col2im: every input pixel sums the kernel taps that read it, as strided
  views of one padded array, which ``mx.compile`` fuses into one pass.
- Pooling gradients use the same gather form; windows that tile the input (VGG's 2x2/2) take
  one elementwise pass, and stride-1 pools (GoogLeNet's and Inception's branch pools) run as
  two separable 1-D passes over contiguous slices (``_SeparablePool``). Max pooling routes
  each window's gradient to its first maximal element, as torch does.

Two properties of MLX 0.32's CPU backend shape all of this: a fused elementwise kernel over
contiguous inputs is one flat loop the C++ compiler vectorises, over strided views a nest of
loops stepping one pointer per input per element (several times slower with many inputs);
and the CPU backend has no buffer cache (see ``fastlayers._blas.keep_freed_memory``).
Forward values equal ``mx.conv2d`` / torch up to float32 summation order; other devices
(Metal) keep MLX's own convolution, which is fast there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from types import ModuleType

import mlx.core as mx
import mlx.nn as nn

from . import native

Pair = tuple[int, int]

#: Below this many input channels a shifted-product convolution does k*k thin products; MLX's
#: im2col (k*k*C columns, one product) is faster there (the RGB input layer), and so is the
#: col2im input gradient.
_MIN_SHIFTED_CHANNELS = 16
#: On small feature maps (below about 50x50 outputs) MLX's im2col matrix fits in cache and its
#: one long product beats k*k shorter ones; above, the im2col copy dominates.
_MIN_SHIFTED_PIXELS = 2500


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else v


def _one(value: object) -> mx.array:
    """custom_function hands a single array, or a one-element list, depending on the arity."""
    return value[0] if isinstance(value, (list, tuple)) else value


def _on_cpu() -> bool:
    return mx.default_device().type == mx.DeviceType.cpu


# -- the gather form of "scatter every window tap back to the pixel it read" -------------------

def _interleave(phases: list[list[mx.array]], s: Pair) -> mx.array:
    """phases[a][b] (N, T, U, C) -> (N, T*sh, U*sw, C) whose pixel (s*t + a, s*u + b) is phases[a][b][t, u]."""
    sh, sw = s
    if (sh, sw) == (1, 1):
        return phases[0][0]
    n, t, u, c = phases[0][0].shape
    rows = [mx.stack(row, axis=3) for row in phases]                   # (N, T, U, sw, C)
    return mx.stack(rows, axis=2).reshape(n, t * sh, u * sw, c)      # (N, T, sh, U, sw, C)


def _scatter_taps(term: Callable[[int, int, slice, slice], mx.array], k: Pair, s: Pair,
                  out_hw: Pair, padded_hw: Pair, like: mx.array) -> mx.array:
    """Sum, over the taps (i, j) of every window, of that tap's value put back at the pixel it read.

    Window (o, o') reads padded pixel (s*o + i, s*o' + j) through tap (i, j). Pixel s*t + a (one
    "phase" a per row offset) is read by taps i = a + s*q of windows t - q, so each phase is a
    plain sum of shifted views. ``term(i, j, rows, cols)`` returns tap (i, j)'s values at windows
    (rows, cols) of arrays padded by ``_gather_padding``. ``like`` is any array with the result's
    batch size, channel count and dtype. Returns (N, Hp, Wp, C).
    """
    (kh, kw), (sh, sw) = k, s
    hp, wp = padded_hw
    qh, qw = -(-kh // sh), -(-kw // sw)
    t0, u0 = -(-hp // sh), -(-wp // sw)
    phases = []
    for a in range(sh):
        row = []
        for b in range(sw):
            total = None
            for q, i in enumerate(range(a, kh, sh)):
                for r, j in enumerate(range(b, kw, sw)):
                    value = term(i, j, slice(qh - 1 - q, qh - 1 - q + t0), slice(qw - 1 - r, qw - 1 - r + u0))
                    total = value if total is None else total + value
            row.append(total if total is not None else mx.zeros((like.shape[0], t0, u0, like.shape[-1]), like.dtype))
        phases.append(row)
    return _interleave(phases, s)[:, :hp, :wp, :]


def _gather_padding(k: Pair, s: Pair, out_hw: Pair, padded_hw: Pair) -> list[tuple[int, int]]:
    """Spatial pad widths that ``_scatter_taps`` expects on window-grid arrays (N, oh, ow, ...)."""
    qh, qw = -(-k[0] // s[0]), -(-k[1] // s[1])
    t0, u0 = -(-padded_hw[0] // s[0]), -(-padded_hw[1] // s[1])
    return [(qh - 1, max(0, t0 - out_hw[0])), (qw - 1, max(0, u0 - out_hw[1]))]


def _pad_window_grid(x: mx.array, widths: list[tuple[int, int]], value: float = 0.0) -> mx.array:
    if not any(a or b for a, b in widths):
        return x
    return mx.pad(x, [(0, 0), *widths] + [(0, 0)] * (x.ndim - 3), constant_values=value)


# -- convolution ----------------------------------------------------------------------------------

def _shifted_correlation(x: mx.array, tap: Callable[[int, int], mx.array], k: Pair,
                         pad_lo: Pair, pad_hi: Pair) -> mx.array:
    """Stride-1 ``out[y, x] = sum_ij pad(x)[y + i, x + j] @ tap(i, j)`` (tap: (C_in, C_out)) without im2col.

    With the padded image flattened to (pixels, C), the rows read by tap (i, j) for all outputs
    of one image row-major on the *padded* width are one contiguous slice starting at
    i * Wp + j, so each tap is a single matrix product on a view, accumulated with addmm.
    Outputs in the last kw - 1 columns of each padded row wrap around and are dropped.
    """
    kh, kw = k
    n, h, w, c = x.shape
    oh = h + pad_lo[0] + pad_hi[0] - kh + 1
    ow = w + pad_lo[1] + pad_hi[1] - kw + 1
    extra = 1 if kw > 1 else 0      # the last tap's slice runs kw - 1 pixels past the last row
    widths = [(0, 0), (pad_lo[0], pad_hi[0] + extra), (pad_lo[1], pad_hi[1]), (0, 0)]
    xp = mx.pad(x, widths) if any(a or b for a, b in widths) else x
    hp, wp = xp.shape[1], xp.shape[2]
    rows = oh * wp
    outputs = []
    for image in range(n):
        flat = xp[image].reshape(hp * wp, c)
        acc = None
        for i in range(kh):
            for j in range(kw):
                view = flat[i * wp + j: i * wp + j + rows]
                acc = view @ tap(i, j) if acc is None else mx.addmm(acc, view, tap(i, j))
        outputs.append(acc.reshape(oh, wp, -1))
    out = outputs[0][None] if n == 1 else mx.stack(outputs)
    return out[:, :, :ow, :] if ow != wp else out


def _conv_forward(x: mx.array, w: mx.array, stride: Pair, padding: Pair) -> mx.array:
    co, kh, kw, ci = w.shape
    if (kh, kw) == (1, 1) and padding == (0, 0):
        if stride != (1, 1):
            x = x[:, ::stride[0], ::stride[1], :]
        n, h, wd, _ = x.shape
        return (x.reshape(-1, ci) @ w.reshape(co, ci).T).reshape(n, h, wd, co)
    n, h, wd, _ = x.shape
    out_pixels = (h + 2 * padding[0] - kh + 1) * (wd + 2 * padding[1] - kw + 1)
    if stride == (1, 1) and ci >= _MIN_SHIFTED_CHANNELS and out_pixels >= _MIN_SHIFTED_PIXELS:
        # One transposed copy of the kernel, (kh, kw, C_in, C_out): every tap is then a contiguous
        # matrix (a slice of w itself has strides the matmul would copy, once per tap).
        taps = w.transpose(1, 2, 3, 0)
        return _shifted_correlation(x, lambda i, j: taps[i, j], (kh, kw), padding, padding)
    return mx.conv2d(x, w, stride=stride, padding=padding)


def _conv_input_grad(g: mx.array, w: mx.array, stride: Pair, padding: Pair, in_hw: Pair) -> mx.array:
    """Gradient of ``conv2d(x, w, stride, padding)`` w.r.t. x, given the output gradient g."""
    n, oh, ow, co = g.shape
    _, kh, kw, ci = w.shape
    (h, wd), (ph, pw) = in_hw, padding
    if stride == (1, 1) and ci >= _MIN_SHIFTED_CHANNELS and kh > ph and kw > pw and (kh, kw) != (1, 1):
        # Full correlation of g with the flipped kernel: the forward machinery again.
        taps = w.transpose(1, 2, 0, 3)     # (kh, kw, C_out, C_in), as in the forward
        return _shifted_correlation(g, lambda i, j: taps[kh - 1 - i, kw - 1 - j], (kh, kw),
                                    (kh - 1 - ph, kw - 1 - pw), (kh - 1 - ph, kw - 1 - pw))
    # One product gives every tap's contribution (N, oh, ow, kh, kw, C_in); col2im sums them.
    cols = (g.reshape(-1, co) @ w.reshape(co, -1)).reshape(n, oh, ow, kh, kw, ci)
    padded_hw = (h + 2 * ph, wd + 2 * pw)
    colsp = _pad_window_grid(cols, _gather_padding((kh, kw), stride, (oh, ow), padded_hw))
    dxp = _scatter_taps(lambda i, j, rows, cols_: colsp[:, rows, cols_, i, j, :],
                        (kh, kw), stride, (oh, ow), padded_hw, like=cols[:, :, :, 0, 0, :])
    return dxp[:, ph:ph + h, pw:pw + wd, :]


@lru_cache(maxsize=None)
def _conv_function(stride: Pair, padding: Pair) -> Callable[[mx.array, mx.array], mx.array]:
    @mx.custom_function
    def conv(x: mx.array, w: mx.array) -> mx.array:
        return _conv_forward(x, w, stride, padding)

    @conv.vjp
    def conv_vjp(primals: list[mx.array], cotangent: mx.array, output: mx.array) -> tuple[mx.array, mx.array]:
        x, w = primals
        g = _one(cotangent)
        dx = _conv_input_grad(g, w, stride, padding, (x.shape[1], x.shape[2]))
        # The weight gradient (training only; lazily skipped when dreaming) is MLX's own.
        _, (dw,) = mx.vjp(lambda w_: mx.conv2d(x, w_, stride=stride, padding=padding), [w], [g])
        return dx, dw

    return conv


def conv2d(x: mx.array, weight: mx.array, stride: int | Pair = 1, padding: int | Pair = 0,
           bias: mx.array | None = None) -> mx.array:
    """``mx.conv2d`` (groups 1, dilation 1; x NHWC, weight (C_out, kh, kw, C_in)) plus ``bias``, fast
    forward and input gradient on CPU (see the module docstring). Same values and gradients as
    ``mx.conv2d``."""
    stride, padding = _pair(stride), _pair(padding)
    if not _on_cpu():
        y = mx.conv2d(x, weight, stride=stride, padding=padding)
    elif (native_conv := _native_conv(x, weight, stride, padding)) is not None:
        kernels, out_hw = native_conv
        zero = mx.zeros((weight.shape[0],), weight.dtype) if bias is None else bias
        return kernels.conv2d(x, weight, zero, padding[0], padding[1], *out_hw)
    elif stride != (1, 1) and weight.shape[1:3] != (1, 1) and _conv_kernels(x) is not None:
        return conv2d(*_phases_as_channels(x, weight, stride, padding), 1, 0, bias)
    else:
        y = _conv_function(stride, padding)(x, weight)
    return y if bias is None else y + bias


def _phases_as_channels(x: mx.array, weight: mx.array, s: Pair, p: Pair) -> tuple[mx.array, mx.array]:
    """A stride-s convolution as a stride-1 one (padding 0), for the native kernels: input pixel
    (s*t + a, s*u + b) of the padded image becomes channel block (a, b) of pixel (t, u), and kernel
    tap (s*i + a, s*j + b) tap (i, j) of that block (taps past the kernel are zero). The strided
    stems (alexnet's 11x11/4 becomes a 3x3 over 48 channels, Winograd's case; googlenet's and
    resnet50's 7x7/2 a 4x4 over 12) and resnet50's 3x3/2 layers then run as native products, with
    gradients through the rearrangement (a reshape and a transpose) for free."""
    n, h, w, c = x.shape
    co, kh, kw, _ = weight.shape
    (sh, sw), (ph, pw) = s, p
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    th, tw = -(-kh // sh), -(-kw // sw)                    # taps of the stride-1 kernel
    rows, cols = oh + th - 1, ow + tw - 1                  # phase pixels the outputs read
    # Pad (or crop) the image to exactly sh*rows x sw*cols pixels.
    x = mx.pad(x, [(0, 0), (ph, max(0, sh * rows - h - ph)), (pw, max(0, sw * cols - w - pw)), (0, 0)])
    x = x[:, :sh * rows, :sw * cols]
    x = x.reshape(n, rows, sh, cols, sw, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, rows, cols, sh * sw * c)
    weight = mx.pad(weight, [(0, 0), (0, sh * th - kh), (0, sw * tw - kw), (0, 0)])
    weight = weight.reshape(co, th, sh, tw, sw, c).transpose(0, 1, 3, 2, 4, 5).reshape(co, th, tw, sh * sw * c)
    return x, weight


def _native_conv(x: mx.array, weight: mx.array, stride: Pair,
                 padding: Pair) -> tuple[ModuleType, Pair] | None:
    """The native kernels and the output size where they run this convolution (stride 1, a kernel
    wider than 1x1, since 1x1 layers already are one matrix product, and padding inside the
    kernel), or None to use the MLX forms."""
    _, kh, kw, _ = weight.shape
    if stride != (1, 1) or (kh, kw) == (1, 1) or padding[0] >= kh or padding[1] >= kw:
        return None
    kernels = _conv_kernels(x)
    if kernels is None:
        return None
    return kernels, (x.shape[1] + 2 * padding[0] - kh + 1, x.shape[2] + 2 * padding[1] - kw + 1)


def _conv_kernels(x: mx.array) -> ModuleType | None:
    """The native kernels if they can convolve x (built, and a BLAS in the process), else None."""
    kernels = native.for_array(x)
    return kernels if kernels is not None and kernels.has_sgemm() else None


class Conv2d(nn.Conv2d):
    """Drop-in ``nn.Conv2d`` (same parameters and keys) that runs through ``conv2d``."""

    def __call__(self, x: mx.array) -> mx.array:
        return self.convolve(x, self.weight, self.bias if "bias" in self else None)

    def convolve(self, x: mx.array, weight: mx.array, bias: mx.array | None) -> mx.array:
        """This layer's convolution with another weight and bias (a folded BatchNorm's)."""
        if self.groups != 1 or self.dilation not in (1, (1, 1)):
            y = mx.conv2d(x, weight, self.stride, self.padding, self.dilation, self.groups)
            return y if bias is None else y + bias
        return conv2d(x, weight, self.stride, self.padding, bias)


# -- pooling --------------------------------------------------------------------------------------

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
        x, g = _one(primals), _one(cotangent)
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
        x, g = _one(primals), _one(cotangent)
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
        x, g, out = _one(primals), _one(cotangent), _one(output)
        kh, kw = k
        xp, win = windows(x)
        # The tap holding each window's maximum, the first in row-major order on ties (torch's
        # rule). int32, not uint8: MLX's fused kernels run mixed-width types twice as slowly.
        first = _first_tap([win[:, :, :, t // kw, t % kw, :] for t in range(kh * kw)], out)
        if k == s:
            dxp = _non_overlapping(lambda taps: mx.where(first[:, :, None, :, None, :] == taps,
                                                         g[:, :, None, :, None, :], 0.0), k, g)
        else:
            widths = _gather_padding(k, s, out.shape[1:3], xp.shape[1:3])
            gp, firstp = _pad_window_grid(g, widths), _pad_window_grid(first, widths, -1)
            dxp = _scatter_taps(lambda i, j, rows, cols: mx.where(firstp[:, rows, cols] == i * kw + j,
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
    k = _pair(kernel_size)
    s = _pair(stride if stride is not None else kernel_size)
    p = _pair(padding)
    native_pool = _native_pool(x, k, s, p, ceil_mode)
    if native_pool is not None:
        # fastlayers/native/pooling.cpp: each window scanned once, the gradient sent straight to
        # the winner
        kernels, out_hw = native_pool
        return kernels.max_pool2d(x, *k, *s, *p, *out_hw)
    if s == (1, 1) and x.shape[0] == 1 and _on_cpu():
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
        x, g = _one(primals), _one(cotangent)
        n, h, w, c = x.shape
        oh, ow = g.shape[1:3]
        # the forward's padded size (``_windows``): windows never read past it
        padded_hw = (max(h + p[0], (oh - 1) * s[0] + k[0]), max(w + p[1], (ow - 1) * s[1] + k[1]))
        share = g / _avg_divisor(h, w, oh, ow, k, s, p, count_include_pad, g.dtype)
        if k == s:
            dxp = _non_overlapping(lambda taps: share[:, :, None, :, None, :], k, g)
        else:
            sharep = _pad_window_grid(share, _gather_padding(k, s, (oh, ow), padded_hw))
            dxp = _scatter_taps(lambda i, j, rows, cols: sharep[:, rows, cols], k, s, (oh, ow), padded_hw, g)
        return _crop_padding(dxp, p, (h, w))

    return pool


def avg_pool2d(x: mx.array, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
               padding: int | tuple[int, int] = 0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> mx.array:
    """torch.nn.functional.avg_pool2d on NHWC input."""
    k = _pair(kernel_size)
    s = _pair(stride if stride is not None else kernel_size)
    p = _pair(padding)
    native_pool = _native_pool(x, k, s, p, ceil_mode)
    if native_pool is not None:
        # fastlayers/native/pooling.cpp: one pass per window, forward and gradient (Inception's
        # 3x3/1 branch pools are where this matters)
        kernels, out_hw = native_pool
        return kernels.avg_pool2d(x, *k, *s, *p, *out_hw, count_include_pad)
    if s == (1, 1) and x.shape[0] == 1 and _on_cpu():
        return _flat_pool_function("avg", k, p, count_include_pad)(x)
    return _avg_pool_function(k, s, p, ceil_mode, count_include_pad)(x)


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

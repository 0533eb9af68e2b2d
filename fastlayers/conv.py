"""Convolution with torchvision's exact semantics (NHWC), fast on MLX's CPU backend.

Dreaming differentiates every layer w.r.t. its input, and on CPU MLX's own gradients of
convolutions are slow (``bench.py --profile`` shows where; docs/performance.md has the
history): the input gradient of a strided convolution takes MLX's naive convolution loop, and
even a plain 3x3 convolution spends more time building its im2col matrix than in the matrix
product. So ``conv2d`` runs as a native primitive where those are built (``fastlayers/native``:
``conv.cpp``, every layer with the same stride down and across, a strided one as stride-1
correlations over its input's phases; the 3x3 stride-1 layers in ``winograd.cpp``; the bias, a
residual and the activation in the pass that writes the output), or carries its own gradient
(``mx.custom_function``): the MLX forms below, the fallback and the reference:

- A stride-1 convolution is a sum of kh*kw matrix products over *shifted views* of the padded
  input flattened to (pixels, channels): shifting the flat view by one row of the padded image
  (or one pixel) is a contiguous slice, so no im2col copy is made (the few outputs that wrap
  around the padded width are computed and dropped).
- The input gradient is the same shifted-product correlation with the flipped kernel, or, for
  1x1, strided and few-channel (RGB input) layers, one product with the whole kernel followed
  by a gather-form col2im (``fastlayers.windows.scatter_taps``).

MLX 0.32's CPU backend has no buffer cache (see ``fastlayers._blas.keep_freed_memory``).
Forward values equal ``mx.conv2d`` / torch up to float32 summation order; other devices
(Metal) keep MLX's own convolution, which is fast there.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from types import ModuleType

import mlx.core as mx
import mlx.nn as nn

from . import native
from .activation import check as activation_index
from .activation import finish
from .windows import Pair, gather_padding, on_cpu, one, pad_window_grid, pair, scatter_taps

#: Below this many input channels a shifted-product convolution does k*k thin products; MLX's
#: im2col (k*k*C columns, one product) is faster there (the RGB input layer), and so is the
#: col2im input gradient.
_MIN_SHIFTED_CHANNELS = 16
#: On small feature maps (below about 50x50 outputs) MLX's im2col matrix fits in cache and its
#: one long product beats k*k shorter ones; above, the im2col copy dominates.
_MIN_SHIFTED_PIXELS = 2500


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
    colsp = pad_window_grid(cols, gather_padding((kh, kw), stride, (oh, ow), padded_hw))
    dxp = scatter_taps(lambda i, j, rows, cols_: colsp[:, rows, cols_, i, j, :],
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
        g = one(cotangent)
        dx = _conv_input_grad(g, w, stride, padding, (x.shape[1], x.shape[2]))
        # The weight gradient (training only; lazily skipped when dreaming) is MLX's own.
        _, (dw,) = mx.vjp(lambda w_: mx.conv2d(x, w_, stride=stride, padding=padding), [w], [g])
        return dx, dw

    return conv


def conv2d(x: mx.array, weight: mx.array, stride: int | Pair = 1, padding: int | Pair = 0,
           bias: mx.array | None = None, activation: str | None = None,
           residual: mx.array | None = None) -> mx.array:
    """``activation(mx.conv2d(x, weight) + bias + residual)`` (groups 1, dilation 1; x NHWC, weight
    (C_out, kh, kw, C_in); ``activation`` one of ``fastlayers.activation.ACTIVATIONS``; bias and
    residual optional), fast forward and input gradient on CPU (see the module docstring). Same
    values and gradients as those MLX operations."""
    stride, padding = pair(stride), pair(padding)
    act = activation_index(activation)
    if not on_cpu():
        y = mx.conv2d(x, weight, stride=stride, padding=padding)
    elif (native_conv := _native_conv(x, weight, stride, padding)) is not None:
        # fastlayers/native/conv.cpp: the bias, the residual and the activation in the output's
        # own pass, the gradient masked as the backward reads it; strided layers phase by phase
        kernels, out_hw = native_conv
        zero = mx.zeros((weight.shape[0],), weight.dtype) if bias is None else bias
        return kernels.conv2d(x, weight, zero, padding[0], padding[1], *out_hw, act, residual, stride[0])
    elif stride != (1, 1) and _conv_kernels(x) is not None:
        return conv2d(*_phases_as_channels(x, weight, stride, padding), 1, 0, bias, activation, residual)
    else:
        y = _conv_function(stride, padding)(x, weight)
    return finish(y, bias, residual, activation)


def _phases_as_channels(x: mx.array, weight: mx.array, s: Pair, p: Pair) -> tuple[mx.array, mx.array]:
    """A stride-s convolution as a stride-1 one (padding 0): input pixel (s*t + a, s*u + b) of the
    padded image becomes channel block (a, b) of pixel (t, u), and kernel tap (s*i + a, s*j + b) tap
    (i, j) of that block (taps past the kernel are zero), with gradients through the rearrangement
    (a reshape and a transpose) for free. The native kernels take it where it makes a few-channel
    layer a Winograd one (alexnet's 11x11/4 RGB stem becomes a 3x3 over 48 channels) or where their
    own forms do not apply (a different stride down and across); other strided layers run natively,
    the few-channel ones as window products (im2col.cpp), the wider ones phase by phase."""
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
    """The native kernels and the output size where they run this convolution (the same stride
    down and across, padding inside the kernel, and not a strided few-channel layer whose phases
    stacked as channels make a Winograd layer: see ``_phases_as_channels``), or None to use the MLX forms."""
    co, kh, kw, ci = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    if sh != sw or ph >= kh or pw >= kw:
        return None
    kernels = _conv_kernels(x)
    if kernels is None:
        return None
    out_hw = ((x.shape[1] + 2 * ph - kh) // sh + 1, (x.shape[2] + 2 * pw - kw) // sw + 1)
    if sh > 1 and ci < _MIN_SHIFTED_CHANNELS and \
            kernels.conv2d_uses_winograd(sh * sw * ci, co, -(-kh // sh), -(-kw // sw), *out_hw):
        return None
    return kernels, out_hw


def _conv_kernels(x: mx.array) -> ModuleType | None:
    """The native kernels if they can convolve x (built, and a BLAS in the process), else None."""
    kernels = native.for_array(x)
    return kernels if kernels is not None and kernels.has_sgemm() else None


class Conv2d(nn.Conv2d):
    """Drop-in ``nn.Conv2d`` (same parameters and keys) that runs through ``conv2d``; it may end in
    an activation (``activation``), after adding a ``residual``, in the convolution's own pass."""

    def __call__(self, x: mx.array, activation: str | None = None, residual: mx.array | None = None) -> mx.array:
        return self.convolve(x, self.weight, self.bias if "bias" in self else None, activation, residual)

    def convolve(self, x: mx.array, weight: mx.array, bias: mx.array | None, activation: str | None = None,
                 residual: mx.array | None = None) -> mx.array:
        """This layer's convolution with another weight and bias (a folded BatchNorm's)."""
        if self.groups != 1 or self.dilation not in (1, (1, 1)):
            y = mx.conv2d(x, weight, self.stride, self.padding, self.dilation, self.groups)
            return finish(y, bias, residual, activation)
        return conv2d(x, weight, self.stride, self.padding, bias, activation, residual)

"""Depthwise 2-D convolution (NHWC) that is fast on MLX's CPU backend, forward and backward.

MLX runs grouped convolutions with ``groups == channels`` through a naive per-group path on
the CPU (one small convolution per channel, orders of magnitude slower than torch's depthwise
kernel), and EfficientNet spends most of its non-matmul time in them. A depthwise conv is
k*k independent per-channel multiply-adds of shifted input windows, which MLX does well
as plain NHWC slices times a (C,) vector. Autograd through those strided slices is slow,
though (it scatters every tap back), so ``depthwise_conv2d`` is an ``mx.custom_function``
whose VJP uses the same shifted multiply-adds:

* input gradient: a depthwise conv of the upstream gradient with the flipped kernel; for
  stride s it is split into s*s output phases (rows/columns congruent mod s), each a stride-1
  correlation of the gradient with the taps of that phase, then interleaved. This skips the
  (s*s-1)/(s*s) zeros that dilating the gradient would multiply;
* weight gradient: for each tap, the sum over batch and space of input window * gradient
  (needed for fine-tuning, computed lazily: dreaming asks only for the input gradient, and
  MLX never evaluates an output nothing depends on).

An optional per-channel bias rides along (a folded BatchNorm shift). On other devices
(Metal) MLX's own grouped convolution is used: it is fast there. On the CPU, when the native
kernels build here (``fastlayers/native``: one C++ loop per output pixel, channels vectorised,
rows over the cores), they replace all of this. The
shifted multiply-adds below remain the portable path and the reference the native kernels
are tested against.

It works under ``mx.compile``, ``mx.grad`` and ``nn.value_and_grad``. Results equal
``mx.conv2d(..., groups=C)`` up to float32 summation order.

This pure-MLX form is faster than ``mx.conv2d(groups=C)`` forward and backward; MLX's fused
CPU kernels are scalar for broadcast inputs, which is what still separates it from torch's
hand-written kernels on small maps (docs/performance.md has the measurements).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import mlx.core as mx

from . import native
from .activation import check as activation_index
from .activation import finish

#: "same" (TensorFlow: output ceil(size/stride), the odd padding pixel right/bottom), a
#: symmetric int, or explicit ((top, bottom), (left, right)).
Padding = str | int | tuple[tuple[int, int], tuple[int, int]]
Pads = tuple[int, int, int, int]  # top, bottom, left, right


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) for one spatial axis."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _resolve_padding(padding: Padding, h: int, w: int, kh: int, kw: int, stride: int) -> Pads:
    if padding == "same":
        return (*same_padding(h, kh, stride), *same_padding(w, kw, stride))
    if isinstance(padding, int) and not isinstance(padding, bool):
        return padding, padding, padding, padding
    if (isinstance(padding, tuple) and len(padding) == 2
            and all(isinstance(p, tuple) and len(p) == 2 for p in padding)):
        (top, bottom), (left, right) = padding
        return int(top), int(bottom), int(left), int(right)
    raise ValueError(f"padding must be 'same', an int or ((top, bottom), (left, right)), not {padding!r}")


def _pad_hw(x: mx.array, top: int, bottom: int, left: int, right: int) -> mx.array:
    """Zero-pad the spatial axes of NHWC ``x``; a negative amount crops instead."""
    h, w = x.shape[1], x.shape[2]
    if min(top, bottom, left, right) < 0:
        x = x[:, max(-top, 0):h - max(-bottom, 0), max(-left, 0):w - max(-right, 0), :]
    if max(top, bottom, left, right) > 0:
        x = mx.pad(x, [(0, 0), (max(top, 0), max(bottom, 0)), (max(left, 0), max(right, 0)), (0, 0)])
    return x


def _correlate(x: mx.array, taps: mx.array, out_h: int, out_w: int, stride: int = 1) -> mx.array:
    """Valid cross-correlation of x (N, H, W, C) with per-channel taps (kh, kw, C), as k*k
    shifted multiply-adds: out[:, y, x] = sum_ij x[:, s*y + i, s*x + j] * taps[i, j]."""
    kh, kw = taps.shape[0], taps.shape[1]
    span_h, span_w = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            window = x[:, i:i + span_h:stride, j:j + span_w:stride, :] if stride > 1 \
                else x[:, i:i + out_h, j:j + out_w, :]
            term = window * taps[i, j]
            out = term if out is None else out + term
    return out


def _input_grad(g: mx.array, taps: mx.array, size: tuple[int, int], pads: Pads, stride: int) -> mx.array:
    """d(loss)/d(input) of a depthwise conv: the transposed conv of ``g`` (N, oh, ow, C)."""
    kh, kw = taps.shape[0], taps.shape[1]
    h, w = size
    top, _, left, _ = pads
    n, oh, ow, c = g.shape
    flipped = taps[::-1, ::-1]
    if stride == 1:
        # dx[y] = sum_i g[y + top - i] * taps[i]: a correlation of g, zero-padded so that the
        # output has exactly the input's size, with the flipped kernel (padding wider than
        # kernel - 1 makes these amounts negative: crop).
        g = _pad_hw(g, kh - 1 - top, h + top - oh, kw - 1 - left, w + left - ow)
        return _correlate(g, flipped, h, w)
    # Stride s: padded-input row y = s*u + p only receives taps i = s*m + p, from g[u - m].
    # Compute each of the s*s phases (p, q) as a stride-1 correlation, then interleave them.
    s = stride
    hq, wq = -(-(h + top) // s), -(-(w + left) // s)  # phase rows/cols covering the input
    mh, mw = -(-kh // s) - 1, -(-kw // s) - 1          # most taps of any phase, minus one
    g = _pad_hw(g, mh, max(hq - oh, 0), mw, max(wq - ow, 0))
    rows = []
    for p in range(s):
        cols = []
        for q in range(s):
            # taps of this phase, flipped: sub[m', r'] = taps[s*(M-1-m') + p, s*(R-1-r') + q]
            sub = flipped[(kh - 1 - p) % s::s, (kw - 1 - q) % s::s]
            if sub.shape[0] == 0 or sub.shape[1] == 0:
                cols.append(mx.zeros((n, hq, wq, c), g.dtype))
                continue
            # the first tap index m = 0 sits at offset mh in the padded g; a phase with fewer
            # taps (M < mh + 1) starts later
            off_h, off_w = mh + 1 - sub.shape[0], mw + 1 - sub.shape[1]
            cols.append(_correlate(g[:, off_h:, off_w:, :], sub, hq, wq))
        rows.append(mx.stack(cols, axis=3))       # (N, hq, wq, s, C)
    dxp = mx.stack(rows, axis=2)                  # (N, hq, s, wq, s, C)
    dxp = dxp.reshape(n, hq * s, wq * s, c)
    return dxp[:, top:top + h, left:left + w, :]


def _weight_grad(xp: mx.array, g: mx.array, kh: int, kw: int, stride: int) -> mx.array:
    """d(loss)/d(taps) (kh, kw, C): per tap, sum over batch and space of window * g."""
    _, oh, ow, _ = g.shape
    span_h, span_w = stride * (oh - 1) + 1, stride * (ow - 1) + 1
    rows = []
    for i in range(kh):
        row = [(xp[:, i:i + span_h:stride, j:j + span_w:stride, :] * g).sum(axis=(0, 1, 2)) for j in range(kw)]
        rows.append(mx.stack(row))
    return mx.stack(rows)


def _out_size(x: mx.array, taps: mx.array, stride: int, pads: Pads) -> tuple[int, int]:
    """Output (height, width) of x (N, H, W, C) convolved with taps (kh, kw, C) after ``pads``."""
    top, bottom, left, right = pads
    return ((x.shape[1] + top + bottom - taps.shape[0]) // stride + 1,
            (x.shape[2] + left + right - taps.shape[1]) // stride + 1)


@lru_cache(maxsize=256)
def _depthwise_fn(stride: int, pads: Pads) -> Callable[[mx.array, mx.array, mx.array], mx.array]:
    """The custom function for one (stride, padding) pair: the VJP needs them as constants."""
    def padded(x: mx.array) -> mx.array:
        return _pad_hw(x, *pads)

    @mx.custom_function
    def conv(x: mx.array, taps: mx.array, bias: mx.array) -> mx.array:
        # the bias joins the first tap, so under mx.compile it costs no extra pass
        return _correlate(padded(x), taps, *_out_size(x, taps, stride, pads), stride=stride) + bias

    @conv.vjp
    def conv_vjp(primals: list[mx.array], cotangent: mx.array,
                 output: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        x, taps, _ = primals
        g = cotangent[0] if isinstance(cotangent, (list, tuple)) else cotangent
        dx = _input_grad(g, taps, (x.shape[1], x.shape[2]), pads, stride)
        dtaps = _weight_grad(padded(x), g, taps.shape[0], taps.shape[1], stride)
        return dx, dtaps, g.sum(axis=(0, 1, 2))

    return conv


def depthwise_conv2d(x: mx.array, weight: mx.array, stride: int = 1, padding: Padding = "same",
                     bias: mx.array | None = None, activation: str | None = None) -> mx.array:
    """Depthwise conv of x (N, H, W, C) with ``weight`` in MLX's grouped-conv layout (C, kh, kw, 1),
    plus an optional per-channel ``bias`` (C,), then ``activation`` (``fastlayers.activation``).

    Same result as ``activation(mx.conv2d(mx.pad(x, ...), weight, stride=stride, groups=C) + bias)``.
    """
    if x.ndim != 4 or weight.ndim != 4 or weight.shape[3] != 1 or weight.shape[0] != x.shape[3]:
        raise ValueError(f"depthwise_conv2d needs x (N, H, W, C) and weight (C, kh, kw, 1); "
                         f"got x {tuple(x.shape)} and weight {tuple(weight.shape)}")
    c, kh, kw, _ = weight.shape
    if bias is not None and bias.shape != (c,):
        raise ValueError(f"depthwise_conv2d bias must have shape ({c},), got {tuple(bias.shape)}")
    stride = int(stride)
    pads = _resolve_padding(padding, x.shape[1], x.shape[2], kh, kw, stride)
    if x.shape[1] + pads[0] + pads[1] < kh or x.shape[2] + pads[2] + pads[3] < kw:
        raise ValueError(f"input {x.shape[1]}x{x.shape[2]} is smaller than the {kh}x{kw} kernel after padding")
    if mx.default_device().type != mx.DeviceType.cpu:
        # Metal has real depthwise kernels; the shifted multiply-adds are a CPU workaround.
        out = mx.conv2d(_pad_hw(x, *pads), weight, stride=stride, groups=c)
        return finish(out, bias, activation=activation)
    # (C, kh, kw, 1) -> (kh, kw, C): each tap becomes a contiguous (C,) vector that broadcasts
    # over NHWC slices. The transpose is outside the custom function, so autograd maps the
    # taps' gradient back to the parameter layout. mx.contiguous also keeps mx.compile from
    # fusing whatever computed the weight (e.g. a folded BatchNorm scale) into the big
    # per-pixel kernel, where it would be recomputed for every pixel.
    taps = mx.contiguous(weight.reshape(c, kh, kw).transpose(1, 2, 0))
    bias = mx.contiguous(bias) if bias is not None else mx.zeros((c,), x.dtype)
    act = activation_index(activation)
    kernels = native.for_array(x)
    if kernels is not None:
        return kernels.depthwise_conv2d(x, taps, bias, stride, pads[0], pads[2], *_out_size(x, taps, stride, pads),
                                        act)
    return finish(_depthwise_fn(stride, pads)(x, taps, bias), activation=activation)

"""What convolution and pooling share on MLX's CPU backend: argument forms and the gather form.

The gather form of "send every window tap's value back to the pixel it read" (``scatter_taps``)
is how both the col2im input gradient of strided, 1x1 and few-channel convolutions
(``fastlayers.conv``) and the pure-MLX pooling gradients (``fastlayers.pooling``) are written:
every input pixel sums the taps that read it, as strided views of one padded array, which
``mx.compile`` fuses into one pass instead of a scatter.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx

Pair = tuple[int, int]


def pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else v


def one(value: object) -> mx.array:
    """custom_function hands a single array, or a one-element list, depending on the arity."""
    return value[0] if isinstance(value, (list, tuple)) else value


def on_cpu() -> bool:
    return mx.default_device().type == mx.DeviceType.cpu


def interleave(phases: list[list[mx.array]], s: Pair) -> mx.array:
    """phases[a][b] (N, T, U, C) -> (N, T*sh, U*sw, C) whose pixel (s*t + a, s*u + b) is phases[a][b][t, u]."""
    sh, sw = s
    if (sh, sw) == (1, 1):
        return phases[0][0]
    n, t, u, c = phases[0][0].shape
    rows = [mx.stack(row, axis=3) for row in phases]                   # (N, T, U, sw, C)
    return mx.stack(rows, axis=2).reshape(n, t * sh, u * sw, c)      # (N, T, sh, U, sw, C)


def scatter_taps(term: Callable[[int, int, slice, slice], mx.array], k: Pair, s: Pair,
                  out_hw: Pair, padded_hw: Pair, like: mx.array) -> mx.array:
    """Sum, over the taps (i, j) of every window, of that tap's value put back at the pixel it read.

    Window (o, o') reads padded pixel (s*o + i, s*o' + j) through tap (i, j). Pixel s*t + a (one
    "phase" a per row offset) is read by taps i = a + s*q of windows t - q, so each phase is a
    plain sum of shifted views. ``term(i, j, rows, cols)`` returns tap (i, j)'s values at windows
    (rows, cols) of arrays padded by ``gather_padding``. ``like`` is any array with the result's
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
    return interleave(phases, s)[:, :hp, :wp, :]


def gather_padding(k: Pair, s: Pair, out_hw: Pair, padded_hw: Pair) -> list[tuple[int, int]]:
    """Spatial pad widths that ``scatter_taps`` expects on window-grid arrays (N, oh, ow, ...)."""
    qh, qw = -(-k[0] // s[0]), -(-k[1] // s[1])
    t0, u0 = -(-padded_hw[0] // s[0]), -(-padded_hw[1] // s[1])
    return [(qh - 1, max(0, t0 - out_hw[0])), (qw - 1, max(0, u0 - out_hw[1]))]


def pad_window_grid(x: mx.array, widths: list[tuple[int, int]], value: float = 0.0) -> mx.array:
    if not any(a or b for a, b in widths):
        return x
    return mx.pad(x, [(0, 0), *widths] + [(0, 0)] * (x.ndim - 3), constant_values=value)

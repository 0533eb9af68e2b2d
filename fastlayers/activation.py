"""What a convolution ends with: ``activation(conv + bias [+ residual])``, the pure-MLX form.

The native convolutions (``fastlayers/native``) apply the bias, a residual and the activation in
the pass that writes their output, and mask the gradient by the activation as they read it: on
MLX's CPU backend each of those is otherwise a pass over memory of its own, on one thread. This
module is their reference and their fallback: the same result as separate MLX operations, and
the only place that says which activations exist (``ACTIVATIONS``, in the kernels' order).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

#: The activations a convolution can end with; a name's index is the native kernels' ``act``.
ACTIVATIONS = (None, "relu", "relu6")


def check(activation: str | None) -> int:
    """The kernels' index of ``activation``; ValueError for a name that is not one."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; use one of {ACTIVATIONS}")
    return ACTIVATIONS.index(activation)


@mx.custom_function
def relu6(x: mx.array) -> mx.array:
    return mx.minimum(mx.maximum(x, 0.0), 6.0)


@relu6.vjp
def _relu6_vjp(x: mx.array, cotangent: mx.array, output: mx.array) -> mx.array:
    # torch's gradient: 1 strictly inside (0, 6), else 0. One fused mask-multiply; MLX's own
    # VJP of minimum(maximum(...)) builds several select kernels, each a pass over memory.
    x = x[0] if isinstance(x, (list, tuple)) else x
    g = cotangent[0] if isinstance(cotangent, (list, tuple)) else cotangent
    return g * ((x > 0) & (x < 6)).astype(g.dtype)


def finish(y: mx.array, bias: mx.array | None = None, residual: mx.array | None = None,
           activation: str | None = None) -> mx.array:
    """``activation(y + bias + residual)`` with MLX operations (bias, residual optional)."""
    check(activation)
    if bias is not None:
        y = y + bias
    if residual is not None:
        y = y + residual
    if activation == "relu":
        return nn.relu(y)
    if activation == "relu6":
        return relu6(y)
    return y

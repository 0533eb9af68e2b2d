"""Inference-mode BatchNorm, and its folding into the convolution before it (``conv_bn``).

With running statistics a BatchNorm is ``x * scale + shift`` per channel, so conv -> BN is one
convolution with weight ``w * scale`` and bias ``shift``. On MLX's CPU backend the form matters:
compiled, ``nn.BatchNorm``'s ``(x - mean) * rsqrt(var + eps) * weight + bias`` becomes one
per-pixel kernel with five broadcast inputs that runs as a strided loop recomputing the rsqrt
at every pixel, many times slower than a ready scale and shift.

Two forms, chosen by whether the weights are constant:

- As called (the default; training, the parity tests): ``BatchNorm`` is a module that runs
  inference as ``x * scale + shift`` (torch's own formula), the vectors behind ``mx.contiguous``
  so that the compiler cannot pull their computation into the per-pixel kernel. Gradients
  reach every parameter.
- Folded once (``with constant_weights():``, the dream step, which differentiates only the
  image): ``conv_bn`` folds the BatchNorm into the convolution eagerly and caches the result on
  the BatchNorm, keyed by the identity of the arrays it came from, so new weights
  (``load_weights``, a training update) fold again. The folded weight and bias enter the
  compiled graph as constants: no BatchNorm pass forward or back, no per-step pass over the
  weights (folding inside the graph costs one, and measured slower than not folding at
  224 px), and a weight buffer that stays the same, which keeps the native Winograd kernel
  cache warm. A forward + input gradient of a BatchNorm network is faster this way than
  with ``nn.BatchNorm`` (docs/performance.md).

In training mode (batch statistics) nothing folds: the BatchNorm runs as such.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from .activation import finish
from .conv import Conv2d

#: ``conv(weight, bias, activation, residual)``: the convolution with the given weight (output
#: channels first) and bias, ending as ``fastlayers.activation.finish`` says.
ConvWith = Callable[[mx.array, mx.array | None, str | None, mx.array | None], mx.array]

_CONSTANT_WEIGHTS: ContextVar[bool] = ContextVar("constant_weights", default=False)


@contextmanager
def constant_weights() -> Iterator[None]:
    """Within this block model weights are constants: nothing differentiates them and they do
    not change, so inference-mode BatchNorms may fold once, eagerly, and reuse the result."""
    token = _CONSTANT_WEIGHTS.set(True)
    try:
        yield
    finally:
        _CONSTANT_WEIGHTS.reset(token)


def folded_batch_norm(bn: nn.BatchNorm) -> tuple[mx.array, mx.array]:
    """Inference-mode BatchNorm as ``x * scale + shift`` (per channel)."""
    scale = mx.rsqrt(bn.running_var + bn.eps)
    if "weight" in bn:
        scale = bn.weight * scale
    shift = -bn.running_mean * scale
    return scale, (shift + bn.bias if "bias" in bn else shift)


def _fold(weight: mx.array, bias: mx.array | None, bn: nn.BatchNorm) -> tuple[mx.array, mx.array]:
    """(weight * scale, bias * scale + shift): the convolution that equals conv -> bn."""
    scale, shift = folded_batch_norm(bn)
    if bias is not None:
        shift = shift + bias * scale
    return weight * scale.reshape(-1, *([1] * (weight.ndim - 1))), shift


@dataclass(frozen=True)
class _Cached:
    sources: tuple[mx.array, ...]      # the arrays it was computed from, compared by identity
    values: tuple[mx.array, ...]


def _bn_arrays(bn: nn.BatchNorm) -> tuple[mx.array, ...]:
    return tuple(bn[key] for key in ("weight", "bias", "running_mean", "running_var") if key in bn)


def _computed_once(bn: nn.BatchNorm, slot: str, sources: tuple[mx.array, ...],
                   compute: Callable[[], tuple[mx.array, ...]]) -> tuple[mx.array, ...]:
    """``compute()``, evaluated now and kept on ``bn`` (in ``slot``) until one of ``sources`` is replaced."""
    cached: _Cached | None = getattr(bn, slot, None)
    if cached is None or len(cached.sources) != len(sources) or \
            not all(a is b for a, b in zip(cached.sources, sources)):
        values = compute()
        mx.eval(*values)
        cached = _Cached(sources, values)
        # A plain attribute, outside the module's parameter tree (parameters(), saved weights).
        object.__setattr__(bn, slot, cached)
    return cached.values


def _inference(bn: nn.BatchNorm) -> bool:
    return not bn.training and "running_mean" in bn


class BatchNorm(nn.BatchNorm):
    """Drop-in ``nn.BatchNorm`` (same parameters and keys) that runs inference as a ready
    per-channel scale and shift, ``x * scale + shift`` (torch's own inference formula), instead
    of nn.BatchNorm's ``(x - mean) * rsqrt(var + eps) * weight + bias`` per pixel."""

    def __call__(self, x: mx.array) -> mx.array:
        if not _inference(self):
            return super().__call__(x)
        if _CONSTANT_WEIGHTS.get():
            scale, shift = _computed_once(self, "_cached_affine", _bn_arrays(self), lambda: folded_batch_norm(self))
        else:
            scale, shift = (mx.contiguous(v) for v in folded_batch_norm(self))
        return x * scale + shift


def conv_bn(conv: ConvWith, weight: mx.array, bn: nn.BatchNorm, bias: mx.array | None = None,
            activation: str | None = None, residual: mx.array | None = None) -> mx.array:
    """``activation(bn(conv(weight, bias)) + residual)``; with constant weights an inference-mode
    BatchNorm is folded into the convolution, once (see the module docstring), and the residual
    and activation join the convolution's own pass."""
    if _CONSTANT_WEIGHTS.get() and _inference(bn):
        sources = (weight, *([] if bias is None else [bias]), *_bn_arrays(bn))
        folded_weight, folded_bias = _computed_once(bn, "_cached_fold", sources, lambda: _fold(weight, bias, bn))
        return conv(folded_weight, folded_bias, activation, residual)
    return finish(bn(conv(weight, bias, None, None)), residual=residual, activation=activation)


def conv2d_bn(conv: Conv2d, bn: nn.BatchNorm, x: mx.array, activation: str | None = None,
              residual: mx.array | None = None) -> mx.array:
    """``activation(bn(conv(x)) + residual)`` for a ``fastlayers.conv.Conv2d``, folded as ``conv_bn`` folds."""
    return conv_bn(lambda w, b, act, res: conv.convolve(x, w, b, act, res), conv.weight, bn,
                   conv.bias if "bias" in conv else None, activation, residual)

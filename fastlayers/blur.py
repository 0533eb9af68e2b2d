"""Sums of separable blurs (the dream step's gradient smoothing), fast on MLX's CPU backend.

``deepdream.transforms.cascade_smooth_padded`` (three Gaussian blurs of the gradient, every
step) is written with MLX operations: passes over shifted slices on one thread. The native
``separable_blurs`` (``fastlayers/native/blur.cpp``) runs them row by row on all threads. The
MLX form stays the one definition of the smoothing, the fallback and the reference; this
module only says when the native kernel can take over.
"""

from __future__ import annotations

import mlx.core as mx

from . import native


def separable_blurs(padded: mx.array, taps: mx.array) -> mx.array | None:
    """The mean of the separable blurs ``taps`` (B, k) of ``padded`` (N, H + k - 1, W + k - 1, C),
    natively; None where the native kernels do not run (the caller's MLX form then does)."""
    kernels = native.for_array(padded)
    if kernels is None or taps.dtype != mx.float32:
        return None
    return kernels.separable_blurs(padded, taps)

"""The dream step's update (normalise the gradient, step, clamp), fast on MLX's CPU backend.

``deepdream.transforms.normalized_step`` is written with MLX operations: two reductions and a
fused element-wise kernel on one thread, into which ``mx.compile`` folds the scalar square root
and division for every element, and whose per-channel bounds send it down MLX's strided path.
The native ``normalized_step`` (``fastlayers/native/update.cpp``) sums on all threads and writes
the step in one more pass. The MLX form stays the one definition, the fallback and the reference;
this module only says when the native kernel can take over.
"""

from __future__ import annotations

import mlx.core as mx

from . import native

#: The gradient normalisations the kernel knows (deepdream.settings.GRAD_NORMS).
MODES = ("std", "mean-abs")


def normalized_step(state: mx.array, grad: mx.array, scale: mx.array, low: mx.array, high: mx.array,
                    mode: str) -> mx.array | None:
    """``clip(state + scale * normalise(grad), low, high)`` (bounds per channel, the last axis), the
    gradient normalised as ``mode`` says, natively; None where the native kernels do not run (the
    caller's MLX form then does)."""
    kernels = native.for_array(state)
    if kernels is None or mode not in MODES or any(a.dtype != mx.float32 for a in (grad, scale, low, high)):
        return None
    return kernels.normalized_step(state, grad, scale, low, high, mode == "mean-abs")

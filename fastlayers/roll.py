"""The dream step's jitter roll and the reflect padding of its smoothing, fast on MLX's CPU backend.

``deepdream.transforms.roll`` (the image forward and the gradient back, every step) and the
smoothing's ``_reflect_pad_axis`` are written with MLX operations: concatenations and dynamic
slices, each a copy on one thread. The native ``roll_pad`` (``fastlayers/native/roll.cpp``) does
either, or both at once, as one copy on all threads. The MLX forms stay the definitions, the
fallbacks and the references; this module only says when the native kernel can take over.
"""

from __future__ import annotations

import mlx.core as mx

from . import native


def roll_pad(x: mx.array, start: mx.array, pad: int) -> mx.array | None:
    """``x`` (N, H, W, C) rolled so that pixel ``start`` (row, column; an int32 (2,) array) comes first,
    then reflect-padded by ``pad`` on every side, natively; None where the native kernels do not
    run. Differentiable without padding (the opposite roll)."""
    kernels = native.for_array(x)
    if kernels is None or x.ndim != 4:
        return None
    return kernels.roll_pad(x, start, pad)

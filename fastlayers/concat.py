"""Channel concatenation of NHWC maps (Inception blocks' outputs), fast on MLX's CPU backend.

``mx.concatenate`` copies on one thread, and its gradient's parts are strided slices that the
native kernels reading them copy to contiguous arrays first, again on one thread. The native
``concat_channels`` (``fastlayers/native/concat.cpp``) does both copies on all threads; elsewhere
(another device, no native kernels) this is ``mx.concatenate``, which is also its reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx

from . import native


def concat_channels(parts: Sequence[mx.array]) -> mx.array:
    """``mx.concatenate(parts, axis=-1)`` for arrays that differ only in their last dimension."""
    kernels = native.for_array(parts[0])
    if kernels is None or len(parts) < 2 or any(p.dtype != mx.float32 for p in parts):
        return mx.concatenate(list(parts), axis=-1)
    return kernels.concat_channels(list(parts))

"""fastlayers.update: the native normalise-step-clamp equals deepdream.transforms' MLX form."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from deepdream import transforms
from fastlayers import native


@pytest.mark.parametrize("mode", ["std", "mean-abs"])
@pytest.mark.parametrize("shape", [(1, 37, 53, 3), (2, 5, 4, 3), (1, 1, 1, 3)], ids=["photo", "batch", "one-pixel"])
def test_native_step_equals_the_mlx_form(mode: str, shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    if native.load() is None:
        pytest.skip(f"native kernels unavailable: {native.status}")
    rng = np.random.default_rng(0)
    state = mx.array(rng.standard_normal(shape).astype(np.float32))
    grad = mx.array((rng.standard_normal(shape) * 0.01 + 0.003).astype(np.float32))
    low, high = mx.array([-1.5, -1.0, -2.0]), mx.array([1.2, 2.0, 1.5])

    def clamp(x: mx.array) -> mx.array:
        return mx.minimum(mx.maximum(x, low), high)

    scale, inv_count = mx.array(0.09) * 1.3, mx.array(1.0 / state.size)
    step = mx.compile(lambda s, g, k, i: transforms.normalized_step(s, g, k, i, mode, clamp, (low, high)))
    fast = step(state, grad, scale, inv_count)              # as the dream step runs it
    monkeypatch.setattr(native, "load", lambda: None)
    reference = transforms.normalized_step(state, grad, scale, inv_count, mode, clamp, (low, high))
    assert fast.shape == reference.shape
    np.testing.assert_allclose(np.array(fast), np.array(reference), rtol=0, atol=2e-6)
    if shape[1] > 1:      # the bounds are reached: the clamp is exercised
        assert 0 < float(((reference == low) | (reference == high)).mean()) < 0.5

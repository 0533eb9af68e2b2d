"""fastlayers.blur: the native sum of separable blurs equals the dream step's MLX cascade smoothing."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from deepdream import transforms
from fastlayers import native


@pytest.mark.parametrize("shape", [(1, 37, 53, 3), (2, 9, 12, 5), (1, 4, 3, 3)], ids=["photo", "batch", "tiny"])
@pytest.mark.parametrize("sigma", [0.3, 2.5])
def test_native_smoothing_equals_the_mlx_form(shape: tuple[int, ...], sigma: float,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    if native.load() is None:
        pytest.skip(f"native kernels unavailable: {native.status}")
    grad = mx.array(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    step = mx.compile(lambda g, s: transforms.cascade_smooth(g, s))   # as the dream step runs it
    fast = step(grad, mx.array(sigma))
    monkeypatch.setattr(native, "load", lambda: None)
    reference = transforms.cascade_smooth(grad, mx.array(sigma))
    assert fast.shape == reference.shape == grad.shape
    np.testing.assert_allclose(np.array(fast), np.array(reference), rtol=0, atol=2e-6)

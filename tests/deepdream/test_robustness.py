"""Transformation robustness: the affine resampling (identity, shift, quarter turn), seeded draws within range, gradients."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from deepdream import robustness

def test_affine_sample_identity_shift_and_rotation():
    rng = np.random.default_rng(0)
    x = rng.random((1, 9, 9, 2)).astype(np.float32)
    grid = robustness.sampling_grid(9, 9)
    identity = mx.array([[[1, 0, 0], [0, 1, 0]]], dtype=mx.float32)
    np.testing.assert_allclose(np.array(robustness.affine_sample(mx.array(x), identity, grid)), x, atol=1e-6)
    shift = mx.array([[[1, 0, 2], [0, 1, -1]]], dtype=mx.float32)     # output (y, x) reads source (y+2, x-1)
    out = np.array(robustness.affine_sample(mx.array(x), shift, grid))
    np.testing.assert_allclose(out[0, :7, 1:], x[0, 2:, :8], atol=1e-6)
    quarter = mx.array([[[0, 1, 0], [-1, 0, 0]]], dtype=mx.float32)    # a quarter turn
    out = np.array(robustness.affine_sample(mx.array(x), quarter, grid))
    np.testing.assert_allclose(out[0], np.rot90(x[0], k=1, axes=(0, 1)), atol=1e-5)


def test_robustness_is_seeded_bounded_and_differentiable():
    r = robustness.Robustness()
    a, b = r.sample(np.random.default_rng(3), 4), r.sample(np.random.default_rng(3), 4)
    np.testing.assert_array_equal(a, b)
    scales = 1 / np.sqrt(np.abs(np.linalg.det(a[:, :, :2].astype(np.float64))))
    assert np.all((scales >= 0.9 - 1e-6) & (scales <= 1.1 + 1e-6))
    grid = robustness.sampling_grid(40, 40)
    grad = mx.grad(lambda img: mx.sum(robustness.transform(img, 12, mx.array(a), grid) ** 2))(mx.ones((4, 16, 16, 3)))
    assert float(mx.min(mx.sum(mx.abs(grad), axis=(1, 2, 3)))) > 0

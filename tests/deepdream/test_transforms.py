"""The dream step's image-space operations against independent references (torch, numpy)."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from deepdream import transforms as T

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _gordicaleksa_smoothing(grad: np.ndarray, sigma: float, k: int = 9) -> np.ndarray:
    """pytorch-deepdream's CascadeGaussianSmoothing, transcribed (NCHW, three depthwise convs, mean)."""
    x = torch.from_numpy(grad).permute(0, 3, 1, 2)
    x = F.pad(x, [k // 2] * 4, mode="reflect")
    grids = torch.meshgrid([torch.arange(k, dtype=torch.float32)] * 2, indexing="ij")
    outs = []
    for coeff in (0.5, 1.0, 2.0):
        s = coeff * sigma
        kernel = torch.ones_like(grids[0])
        for grid in grids:
            kernel *= 1 / (s * math.sqrt(2 * math.pi)) * torch.exp(-((grid - (k - 1) / 2) / s) ** 2 / 2)
        kernel = (kernel / kernel.sum()).view(1, 1, k, k).repeat(3, 1, 1, 1)
        outs.append(F.conv2d(x, kernel, groups=3))
    return (sum(outs) / 3).permute(0, 2, 3, 1).numpy()


def _tf_notebook_lap_normalize(grad: np.ndarray, levels: int = 4) -> np.ndarray:
    """The 2015 TF notebook's lap_normalize (conv2d SAME stride 2 / conv2d_transpose), in torch."""
    k = np.array([1, 4, 6, 4, 1], np.float32) / 16
    k5 = torch.from_numpy(np.outer(k, k)).view(1, 1, 5, 5).repeat(3, 1, 1, 1)

    def down(x):
        return F.conv2d(F.pad(x, [2, 2, 2, 2]), k5, stride=2, groups=3)

    def up(x, h, w):
        z = torch.zeros(x.shape[0], x.shape[1], 2 * x.shape[2], 2 * x.shape[3])
        z[:, :, ::2, ::2] = x
        return F.conv2d(F.pad(z[:, :, :h, :w], [2, 2, 2, 2]), k5 * 4, groups=3)

    x = torch.from_numpy(grad).permute(0, 3, 1, 2)
    bands = []
    for _ in range(levels):
        low = down(x)
        bands.append(x - up(low, x.shape[2], x.shape[3]))
        x = low
    bands = [x] + bands[::-1]
    bands = [b / max(float(b.pow(2).mean().sqrt()), 1e-10) for b in bands]
    out = bands[0]
    for band in bands[1:]:
        out = up(out, band.shape[2], band.shape[3]) + band
    return out.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("shape", [(1, 37, 50, 3), (1, 6, 7, 3)])
@pytest.mark.parametrize("sigma", [0.58, 2.5])
def test_cascade_smoothing_matches_pytorch_deepdream(shape, sigma):
    grad = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ours = np.array(T.cascade_smooth(mx.array(grad), mx.array(sigma)))
    np.testing.assert_allclose(ours, _gordicaleksa_smoothing(grad, sigma), atol=2e-6)


@pytest.mark.parametrize("shape", [(1, 37, 50, 3), (1, 64, 48, 3)])
def test_lap_normalize_matches_tf_notebook(shape):
    grad = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    ref = _tf_notebook_lap_normalize(grad)
    np.testing.assert_allclose(np.array(T.lap_normalize(mx.array(grad))), ref, atol=2e-5)
    # The compiled step passes 1/size of every band explicitly; it must give the same result.
    counts = T.lap_inverse_counts(shape[1], shape[2])
    np.testing.assert_allclose(np.array(T.lap_normalize(mx.array(grad), inv_counts=counts)), ref, atol=2e-5)


def test_lap_normalize_equalises_frequency_bands():
    """A gradient dominated by fine noise comes out with its coarse component boosted."""
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:64, 0:64]
    coarse = np.sin(xx / 64 * 2 * np.pi)[None, :, :, None] * 0.01
    fine = rng.standard_normal((1, 64, 64, 1))
    grad = np.repeat(coarse + fine, 3, axis=3).astype(np.float32)
    out = np.array(T.lap_normalize(mx.array(grad)))
    share_in = abs(np.corrcoef(grad.ravel(), np.repeat(coarse, 3, axis=3).ravel())[0, 1])
    share_out = abs(np.corrcoef(out.ravel(), np.repeat(coarse, 3, axis=3).ravel())[0, 1])
    assert share_out > 5 * share_in


def test_roll_matches_numpy_and_undoes():
    x = np.random.default_rng(3).standard_normal((1, 9, 13, 3)).astype(np.float32)
    for shift in [(0, 0), (3, -5), (-20, 27)]:
        start, back = T.roll_starts(9, 13, shift)
        rolled = T.roll(mx.array(x), start)
        np.testing.assert_array_equal(np.array(rolled), np.roll(x, shift, axis=(1, 2)))
        np.testing.assert_array_equal(np.array(T.roll(rolled, back)), x)
    # compiled once, the same kernels roll by any offset (the offsets are inputs, not constants)
    compiled = mx.compile(T.roll)
    for shift in [(1, 2), (-4, 6)]:
        start, _ = T.roll_starts(9, 13, shift)
        np.testing.assert_array_equal(np.array(compiled(mx.array(x), start)), np.roll(x, shift, axis=(1, 2)))


def test_gradient_normalisations():
    g = np.random.default_rng(4).normal(3.0, 5.0, (1, 20, 30, 3)).astype(np.float32)
    inv = mx.array(1.0 / g.size)
    for out in (T.normalize_std(mx.array(g)), T.normalize_std(mx.array(g), inv)):
        out = np.array(out)
        assert abs(out.mean()) < 1e-4 and abs(out.std() - 1) < 1e-3
    out = np.array(T.normalize_mean_abs(mx.array(g), inv))
    assert abs(np.abs(out).mean() - 1) < 1e-4
    np.testing.assert_allclose(out, g / np.abs(g).mean(), rtol=1e-4)


def test_smoothing_sigma_schedule():
    # pytorch-deepdream: ((step + 1) / steps) * 2 + smoothing coefficient
    assert T.smoothing_sigma(0, 10, 0.5) == pytest.approx(0.7)
    assert T.smoothing_sigma(9, 10, 0.5) == pytest.approx(2.5)


def test_octave_sizes_and_limit():
    sizes = T.octave_sizes(300, 451, 4, 1.8)
    assert sizes[-1] == (300, 451)
    assert sizes[0] == (round(300 / 1.8 ** 3), round(451 / 1.8 ** 3))
    assert all(a[0] < b[0] for a, b in zip(sizes, sizes[1:]))
    # 300 / 1.8**3 = 51 px >= 32: all 4 fit; for 100 px only 100, 56 (32 px would be 31)
    assert T.max_octaves(300, 451, 1.8, 32, 4) == 4
    assert T.max_octaves(100, 150, 1.8, 32, 4) == 2
    assert T.max_octaves(30, 30, 1.8, 32, 4) == 1


@pytest.mark.parametrize("length,tile", [(1000, 512), (512, 512), (100, 512), (1201, 256)])
def test_tile_bounds_cover_exactly(length, tile):
    bounds = T.tile_bounds(length, tile)
    assert bounds[0][0] == 0 and bounds[-1][1] == length
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = {b - a for a, b in bounds}
    assert max(sizes) <= tile and max(sizes) - min(sizes) <= 1


def test_resize_keeps_float_detail():
    """Detail carried between octaves is signed and small: resizing must not quantise or clip it."""
    detail = (np.random.default_rng(5).standard_normal((40, 60, 3)) * 1e-3).astype(np.float32)
    up = T.resize(detail, 80, 120)
    assert up.shape == (80, 120, 3) and up.dtype == np.float32
    assert up.min() < 0 and np.abs(up).max() < 1e-2
    assert abs(up.mean() - detail.mean()) < 1e-4
    down = T.resize(np.full((80, 120, 3), 0.25, np.float32), 40, 60)
    np.testing.assert_allclose(down, 0.25, atol=1e-5)

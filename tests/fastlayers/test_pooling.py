"""fastlayers.pooling's max and average pooling, with their own gradients, against torch.

Both CPU paths (``cpu_kernels``: fastlayers/native/pooling.cpp and the pure-MLX forms), with
ceil_mode, padding, overlapping and tiling windows, and ReLU ties (torch routes a tied window's
gradient to its first max).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastlayers.pooling import avg_pool2d, max_pool2d


def _nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


POOL_CASES = [
    # (H, W, kernel, stride, padding, ceil_mode)
    (9, 11, 3, 2, 0, True),       # googlenet's stride-2 pools
    (12, 13, 3, 1, 1, True),      # googlenet's inception branch pool
    (14, 13, 2, 2, 0, True),      # googlenet's maxpool4: non-overlapping windows, ceil_mode
    (16, 12, 2, 2, 0, False),     # vgg's pools
    (15, 13, 2, 2, 0, False),     # non-overlapping, floor mode drops the last row and column
    (13, 11, 3, 3, 1, True),      # non-overlapping with padding
    (11, 9, 3, 2, 1, False),      # resnet's stem pool
    (35, 35, 3, 1, 1, False),     # inception_v3's branch pool
    (15, 15, 3, 2, 0, False),     # inception_v3 / alexnet
]


@pytest.mark.parametrize("relu", [False, True], ids=["signed", "relu-ties"])
@pytest.mark.parametrize("h,w,k,s,p,ceil_mode", POOL_CASES)
def test_max_pool2d_matches_torch(h: int, w: int, k: int, s: int, p: int, ceil_mode: bool, relu: bool,
                                  cpu_kernels: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, h, w, 70)).astype(np.float32)   # 70 channels: past one 64-wide chunk
    if relu:
        x = np.maximum(x, 0.0)      # many tied zeros: torch sends the gradient to the first
    xt = _nchw(x).requires_grad_(True)
    yt = F.max_pool2d(xt, k, s, p, ceil_mode=ceil_mode)
    upstream = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    (gt,) = torch.autograd.grad((yt * torch.from_numpy(upstream)).sum(), xt)
    up = mx.array(upstream.transpose(0, 2, 3, 1))
    y = max_pool2d(mx.array(x), k, s, p, ceil_mode)
    g = mx.grad(lambda a: (max_pool2d(a, k, s, p, ceil_mode) * up).sum())(mx.array(x))
    np.testing.assert_array_equal(np.array(y), _nhwc(yt))
    # a wrong route moves whole upstream values (~1); summation order moves ~1e-6
    np.testing.assert_allclose(np.array(g), _nhwc(gt), atol=1e-5)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("h,w,k,s,p,ceil_mode", POOL_CASES)
def test_avg_pool2d_matches_torch(h: int, w: int, k: int, s: int, p: int, ceil_mode: bool,
                                  count_include_pad: bool,
                                  cpu_kernels: str) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, h, w, 70)).astype(np.float32)   # 70 channels: past one 64-wide chunk
    xt = _nchw(x).requires_grad_(True)
    yt = F.avg_pool2d(xt, k, s, p, ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    upstream = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    (gt,) = torch.autograd.grad((yt * torch.from_numpy(upstream)).sum(), xt)
    up = mx.array(upstream.transpose(0, 2, 3, 1))
    pool = mx.compile(lambda a: avg_pool2d(a, k, s, p, ceil_mode, count_include_pad))
    g = mx.grad(lambda a: (pool(a) * up).sum())(mx.array(x))
    np.testing.assert_allclose(np.array(pool(mx.array(x))), _nhwc(yt), atol=1e-5)
    np.testing.assert_allclose(np.array(g), _nhwc(gt), atol=1e-5)

"""fastlayers/native: the C++ depthwise convolution builds here, agrees with the pure-MLX path, and can be switched off."""

from __future__ import annotations

import shutil

import mlx.core as mx
import numpy as np
import pytest

from fastlayers import native
from fastlayers.depthwise import depthwise_conv2d


def _rel(a: mx.array, b: mx.array) -> float:
    return float(mx.abs(a - b).max() / mx.abs(b).max())


def test_builds_where_cmake_is_present():
    if shutil.which("cmake") is None:
        pytest.skip("no cmake: the pure-MLX path runs (see native.status)")
    assert native.load() is not None, native.status
    assert native.status.startswith("built and loaded from")


def test_native_kernels_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "status", "not loaded yet")
    monkeypatch.setenv(native.DISABLE_VAR, "1")
    assert native.load() is None and native.status.startswith("off")


def test_native_and_mlx_paths_agree_under_compile():
    kernels = native.load()
    if kernels is None:
        pytest.skip(f"native kernels: {native.status}")
    rng = np.random.default_rng(11)
    x = mx.array(rng.standard_normal((2, 13, 18, 6)).astype(np.float32))
    w = mx.array(rng.standard_normal((6, 5, 5, 1)).astype(np.float32))
    b = mx.array(rng.standard_normal(6).astype(np.float32))
    up = mx.array(rng.standard_normal((2, 7, 9, 6)).astype(np.float32))

    def loss(x, w, b):
        return (depthwise_conv2d(x, w, 2, "same", b) * up).sum()

    native_grads = mx.compile(mx.grad(loss, argnums=(0, 1, 2)))(x, w, b)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(native, "load", lambda: None)
        mlx_grads = mx.grad(loss, argnums=(0, 1, 2))(x, w, b)
    for ours, ref in zip(native_grads, mlx_grads):
        assert _rel(ours, ref) < 1e-5


def _torch_conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, padding: int, upstream: np.ndarray):
    """torch's forward and input gradient of a convolution, NHWC in and out."""
    import torch
    import torch.nn.functional as F

    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(True)
    wt = torch.from_numpy(np.ascontiguousarray(weight.transpose(0, 3, 1, 2)))
    yt = F.conv2d(xt, wt, torch.from_numpy(bias), padding=padding)
    (yt * torch.from_numpy(np.ascontiguousarray(upstream.transpose(0, 3, 1, 2)))).sum().backward()
    return yt.detach().numpy().transpose(0, 2, 3, 1), xt.grad.numpy().transpose(0, 2, 3, 1)


WINOGRAD_CASES = [
    # (batch, H, W, C_in, C_out, padding)
    (1, 32, 32, 16, 16, 1),      # whole 4x4 tiles
    (2, 30, 33, 20, 40, 1),      # a batch, cut last tiles, a partial group of channels (20 = 16 + 4)
    (1, 19, 17, 48, 24, 0),      # no padding
    (1, 18, 21, 16, 32, 2),      # padding wider than the kernel's half: zero rows and columns around the output
    (1, 28, 28, 256, 256, 1),    # VGG's depth, where float32 rounding adds up the most
]


@pytest.mark.parametrize("n,h,w,ci,co,p", WINOGRAD_CASES)
def test_winograd_convolution_matches_torch(n: int, h: int, w: int, ci: int, co: int, p: int):
    """winograd.cpp's F(4x4, 3x3): forward (with the bias) and input gradient against torch, within its
    float32 rounding (~1e-5 of the range; the shifted products of conv.cpp agree to ~1e-7)."""
    from fastlayers.conv import conv2d

    kernels = native.load()
    if kernels is None:
        pytest.skip(f"native kernels: {native.status}")
    oh, ow = h + 2 * p - 2, w + 2 * p - 2
    assert kernels.conv2d_uses_winograd(ci, co, 3, 3, oh, ow)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, h, w, ci)).astype(np.float32)
    weight = (rng.standard_normal((co, 3, 3, ci)) / np.sqrt(9 * ci)).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    upstream = rng.standard_normal((n, oh, ow, co)).astype(np.float32)
    y_ref, dx_ref = _torch_conv(x, weight, bias, p, upstream)

    wm, bm, up = mx.array(weight), mx.array(bias), mx.array(upstream)
    y = conv2d(mx.array(x), wm, 1, p, bm)
    dx = mx.compile(mx.grad(lambda a: (conv2d(a, wm, 1, p, bm) * up).sum()))(mx.array(x))
    assert _rel(y, mx.array(y_ref)) < 1e-4
    assert _rel(dx, mx.array(dx_ref)) < 1e-4


def test_winograd_only_where_it_pays():
    """3x3 with >= 16 channels on both sides and >= 16 output tiles; everything else keeps conv.cpp's products."""
    kernels = native.load()
    if kernels is None:
        pytest.skip(f"native kernels: {native.status}")
    assert kernels.conv2d_uses_winograd(64, 64, 3, 3, 224, 224)
    assert kernels.conv2d_uses_winograd(512, 512, 3, 3, 14, 14)       # 4 x 4 tiles: googlenet's and VGG's deep maps
    assert not kernels.conv2d_uses_winograd(512, 512, 3, 3, 7, 7)     # 2 x 2 tiles: the products are too small
    assert not kernels.conv2d_uses_winograd(3, 64, 3, 3, 224, 224)    # the RGB stem
    assert not kernels.conv2d_uses_winograd(64, 8, 3, 3, 224, 224)
    assert not kernels.conv2d_uses_winograd(64, 64, 5, 5, 224, 224)
    assert not kernels.conv2d_uses_winograd(64, 64, 1, 7, 224, 224)


def test_winograd_kernel_cache_follows_the_weights():
    """The transformed kernel is cached per weight buffer: new weights (here the old array's buffer could be
    reused in place) are transformed afresh, and a kernel is dropped once its weights are gone."""
    import gc

    from fastlayers.conv import conv2d

    kernels = native.load()
    if kernels is None:
        pytest.skip(f"native kernels: {native.status}")
    gc.collect()
    before = kernels.winograd_cached_kernels()
    x = mx.random.normal((1, 24, 24, 16), key=mx.random.key(0))
    weight = mx.random.normal((16, 3, 3, 16), key=mx.random.key(1))
    first = conv2d(x, weight, 1, 1)
    mx.eval(first)
    assert kernels.winograd_cached_kernels() == before + 1
    weight = weight * 2            # the old array's last reference: MLX may write the product into its buffer
    second = conv2d(x, weight, 1, 1)
    assert _rel(second, 2 * first) < 1e-5
    del weight, first, second
    gc.collect()
    assert kernels.winograd_cached_kernels() == before

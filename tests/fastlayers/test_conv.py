"""fastlayers.conv's convolution, with its own gradients, against torch.

Every code path is exercised, on both CPU paths (``cpu_kernels``): the native convolution
(fastlayers/native/conv.cpp: per-tap products, strided layers phase by phase; im2col.cpp: the
few-channel layers' window products; its Winograd 3x3 layers have their own cases in
tests/fastlayers/test_native.py) and, without
it, the shifted-product convolution (large maps, >= 16 channels) and MLX's im2col one (small
maps, RGB input), the shifted and the col2im input gradients (stride 1, strided, 1x1, few
channels), batches, non-square kernels and biases.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastlayers import conv
from fastlayers.conv import Conv2d, conv2d


def _nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a) - b).max() / max(np.abs(b).max(), 1e-12))


CONV_CASES = [
    # (batch, H, W, C_in, C_out, kernel, stride, padding): the path each one takes
    (1, 52, 50, 16, 24, 3, 1, 1),          # shifted forward + shifted input gradient (native: Winograd)
    (1, 51, 53, 20, 8, (1, 7), 1, (0, 3)),  # shifted, non-square kernel (inception_v3)
    (1, 50, 52, 24, 16, (7, 1), 1, (3, 0)),
    (1, 52, 52, 16, 16, 5, 1, 0),          # shifted without padding
    (1, 60, 57, 3, 16, 3, 1, 1),           # RGB input: im2col forward, col2im gradient (native: im2col.cpp)
    (1, 33, 31, 3, 8, 7, 2, 3),            # strided stem (googlenet, resnet; native: im2col.cpp)
    (1, 23, 21, 4, 8, 2, 2, 0),            # im2col.cpp with a 16-deep window: its gradient's product unpadded
    (1, 47, 45, 3, 8, 11, 4, 2),           # alexnet's stem
    (1, 75, 73, 3, 16, 11, 4, 2),          # native: its phases stacked as 48 channels, a Winograd 3x3
    (1, 21, 20, 32, 16, 3, 2, 1),          # strided, many channels (resnet bottleneck)
    (1, 20, 19, 16, 32, 1, 2, 0),          # 1x1 stride 2 (resnet downsample): three phases unread
    (1, 19, 22, 20, 24, 3, 2, 0),          # strided without padding (inception_v3's Mixed_6a)
    (1, 15, 14, 5, 12, 1, 2, 0),           # 1x1 stride 2, few channels
    (1, 12, 13, 24, 40, 1, 1, 0),          # 1x1: matrix products
    (1, 13, 11, 32, 48, 3, 1, 1),          # small map: im2col forward, shifted gradient
    (2, 52, 50, 16, 8, 3, 1, 1),           # a batch (training)
    (2, 17, 16, 4, 6, 5, 3, 1),
    (2, 9, 10, 5, 7, 5, 1, 2),             # native: fewer than 16 input channels, a batch, padding
    (1, 11, 9, 6, 20, (3, 5), 1, (2, 1)),  # native: padding wider than half the kernel
]


@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("n,h,w,ci,co,k,s,p", CONV_CASES)
def test_conv2d_matches_torch(n: int, h: int, w: int, ci: int, co: int, k, s: int, p, with_bias: bool,
                              cpu_kernels: str) -> None:
    rng = np.random.default_rng(0)
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((n, h, w, ci)).astype(np.float32)
    weight = (rng.standard_normal((co, kh, kw, ci)) / np.sqrt(ci * kh * kw)).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    xt = _nchw(x).requires_grad_(True)
    wt = torch.from_numpy(np.ascontiguousarray(weight.transpose(0, 3, 1, 2))).requires_grad_(True)
    bt = torch.from_numpy(bias).requires_grad_(True)
    yt = F.conv2d(xt, wt, bt if with_bias else None, stride=s, padding=p)
    upstream = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    gxt, gwt, gbt = torch.autograd.grad((yt * torch.from_numpy(upstream)).sum(), (xt, wt, bt), allow_unused=True)

    up = mx.array(upstream.transpose(0, 2, 3, 1))

    def run(a: mx.array, b: mx.array, c: mx.array) -> mx.array:
        return conv2d(a, b, s, p, c if with_bias else None)

    y = run(mx.array(x), mx.array(weight), mx.array(bias))
    loss = mx.compile(mx.grad(lambda a, b, c: (run(a, b, c) * up).sum(), argnums=(0, 1, 2)))
    gx, gw, gb = loss(mx.array(x), mx.array(weight), mx.array(bias))
    assert y.shape == _nhwc(yt).shape
    assert _rel(y, _nhwc(yt)) < 1e-5
    assert _rel(gx, _nhwc(gxt)) < 1e-5
    assert _rel(gw, gwt.numpy().transpose(0, 2, 3, 1)) < 1e-5
    if with_bias:
        assert _rel(gb, gbt.numpy()) < 1e-5


def test_native_convolution_runs_every_layer(cpu_kernels: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the native kernels every convolution goes to conv.cpp (so the cases above test it):
    strided ones as they are, or, with unequal strides or where few input channels stacked by
    phase make a Winograd layer (alexnet's stem), as a stride-1 one over their phases stacked as
    channels (``conv._phases_as_channels``). The pure-MLX path never calls it."""
    from fastlayers import native

    kernels = native.load()
    strides = []
    if kernels is not None:
        class Counting:
            def __getattr__(self, name: str):
                if name == "conv2d":
                    return lambda *a, **k: strides.append(a[9]) or kernels.conv2d(*a, **k)
                return getattr(kernels, name)
        monkeypatch.setattr(native, "load", lambda: Counting())
    x = mx.random.normal((1, 20, 20, 16))
    cases = [((4, 3, 3, 16), 1, 1), ((4, 3, 3, 16), 2, 1), ((4, 1, 1, 16), 1, 0), ((4, 1, 1, 16), 2, 0),
             ((4, 3, 3, 3), 2, 1), ((4, 3, 3, 16), (2, 1), 1), ((16, 11, 11, 3), 4, 2)]
    for shape, stride, padding in cases:
        weight = mx.random.normal(shape)
        a = x[..., :shape[-1]] if shape[1] < 11 else mx.random.normal((1, 75, 75, 3))
        mx.eval(mx.grad(lambda a: conv2d(a, weight, stride, padding).sum())(a))
    assert strides == ([1, 2, 1, 2, 2, 1, 1] if cpu_kernels == "native" else [])


@pytest.mark.parametrize("size,expected", [(52, 2), (20, 1)])
def test_shifted_products_are_used_on_large_maps(monkeypatch: pytest.MonkeyPatch, size: int, expected: int) -> None:
    """Without the native kernels, a large 16-channel map runs forward and input gradient as
    shifted products; a small one keeps MLX's im2col forward (so the CASES above cover both routes)."""
    from fastlayers import native

    monkeypatch.setattr(native, "load", lambda: None)
    calls = []
    real = conv._shifted_correlation
    monkeypatch.setattr(conv, "_shifted_correlation", lambda *a, **k: calls.append(1) or real(*a, **k))
    conv._conv_function.cache_clear()
    x = mx.random.normal((1, size, size, 16))
    weight = mx.random.normal((8, 3, 3, 16))
    mx.eval(mx.grad(lambda a: conv2d(a, weight, 1, 1).sum())(x))
    conv._conv_function.cache_clear()
    assert len(calls) == expected


def test_conv2d_module_is_a_drop_in_nn_conv2d() -> None:
    fast = Conv2d(8, 16, 3, stride=2, padding=1)
    plain = nn.Conv2d(8, 16, 3, stride=2, padding=1)
    plain.update(fast.parameters())
    assert set(dict(fast.parameters())) == {"weight", "bias"}
    x = mx.random.normal((1, 20, 18, 8))
    assert _rel(fast(x), np.array(plain(x))) < 1e-5
    gf = mx.grad(lambda a: (fast(a) ** 2).sum())(x)
    gp = mx.grad(lambda a: (plain(a) ** 2).sum())(x)
    assert _rel(gf, np.array(gp)) < 1e-5


ENDING_CASES = [
    # (H, W, C_in, C_out, kernel, stride, padding): one per native route
    (52, 50, 16, 24, 3, 1, 1),      # Winograd
    (21, 23, 24, 40, 1, 1, 0),      # 1x1: one product per row block
    (30, 28, 16, 20, 5, 1, 2),      # shifted products
    (33, 31, 3, 16, 7, 2, 3),       # strided stem: phases as channels, RGB input gradient
]


@pytest.mark.parametrize("activation", ["relu", "relu6"])
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("h,w,ci,co,k,s,p", ENDING_CASES)
def test_activation_and_residual_join_the_convolution(h: int, w: int, ci: int, co: int, k: int, s: int, p: int,
                                                      activation: str, with_residual: bool,
                                                      cpu_kernels: str) -> None:
    """conv2d(..., activation, residual) equals the convolution followed by MLX's own residual sum
    and activation, forward and every gradient: the pre-activation values are the same numbers,
    so every ReLU takes the same decision and the comparison can be tight."""
    from fastlayers.activation import finish

    rng = np.random.default_rng(3)
    x = mx.array(rng.standard_normal((1, h, w, ci)).astype(np.float32))
    weight = mx.array((4 * rng.standard_normal((co, k, k, ci)) / np.sqrt(ci * k * k)).astype(np.float32))
    bias = mx.array(rng.standard_normal(co).astype(np.float32))
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    residual = mx.array(rng.standard_normal((1, oh, ow, co)).astype(np.float32)) if with_residual else None
    up = mx.array(rng.standard_normal((1, oh, ow, co)).astype(np.float32))

    def fused(a, b, c, r):
        return conv2d(a, b, s, p, c, activation, r)

    def separate(a, b, c, r):
        return finish(conv2d(a, b, s, p, c), residual=r, activation=activation)

    args = (x, weight, bias, residual if with_residual else mx.zeros((1, oh, ow, co)))
    argnums = (0, 1, 2, 3) if with_residual else (0, 1, 2)
    results = []
    for f in (fused, separate):
        def loss(a, b, c, r, f=f):
            return (f(a, b, c, r if with_residual else None) * up).sum()
        y = f(*args[:3], residual)
        results.append((y, mx.compile(mx.grad(loss, argnums=argnums))(*args)))
    (y1, g1), (y2, g2) = results
    assert _rel(y1, np.array(y2)) < 1e-6
    if activation == "relu6":
        assert 0 < float((y2 == 6).mean()) < 0.5            # the upper kink is exercised
    assert 0 < float((y2 == 0).mean()) < 0.9
    for a, b in zip(g1, g2):
        assert _rel(a, np.array(b)) < 1e-5


@pytest.mark.parametrize("ci,co", [(16, 96), (96, 16), (64, 128)], ids=["expansion", "projection", "wide"])
def test_1x1_layer_over_many_blocks_input_gradient_alone(ci: int, co: int, cpu_kernels: str) -> None:
    """A 1x1 layer over more pixels than one block on each thread (thin products take blocks of
    a few hundred rows; wider ones longer blocks), with ReLU6: its forward and the input gradient
    alone, which the native kernel masks block by block as it reads it, against MLX's ReLU6 after
    the convolution."""
    from fastlayers.activation import finish

    rng = np.random.default_rng(5)
    x = mx.array(rng.standard_normal((1, 70, 64, ci)).astype(np.float32))
    weight = mx.array((3 * rng.standard_normal((co, 1, 1, ci)) / np.sqrt(ci)).astype(np.float32))
    bias = mx.array(rng.standard_normal(co).astype(np.float32))
    up = mx.array(rng.standard_normal((1, 70, 64, co)).astype(np.float32))
    fused = conv2d(x, weight, 1, 0, bias, "relu6")
    separate = finish(conv2d(x, weight, 1, 0), bias, activation="relu6")
    assert _rel(fused, np.array(separate)) < 1e-6
    assert 0.1 < float(((separate > 0) & (separate < 6)).mean()) < 0.9
    grads = [mx.grad(lambda a, f=f: (f(a) * up).sum())(x)
             for f in (lambda a: conv2d(a, weight, 1, 0, bias, "relu6"),
                       lambda a: finish(conv2d(a, weight, 1, 0), bias, activation="relu6"))]
    assert _rel(grads[0], np.array(grads[1])) < 1e-5

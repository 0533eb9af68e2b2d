"""models/native: the C++ depthwise convolution builds here, agrees with the pure-MLX path, and can be switched off."""

from __future__ import annotations

import shutil

import mlx.core as mx
import numpy as np
import pytest

from models import native
from models.depthwise import depthwise_conv2d


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

"""fastlayers.batchnorm: inference BatchNorms as a ready scale and shift, folded into the convolution
before them when the weights are constant (the dream step), and the cache of that fold."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import models  # noqa: F401  (fast BLAS before mlx runs)
from fastlayers.batchnorm import BatchNorm, conv2d_bn, constant_weights
from fastlayers.conv import Conv2d


def _rel(a: mx.array, b: mx.array) -> float:
    return float(mx.abs(a - b).max() / mx.abs(b).max())


def _random_bn(channels: int, seed: int) -> BatchNorm:
    """Inference BatchNorm with all four tensors random (the identity would hide a mix-up)."""
    rng = np.random.default_rng(seed)
    bn = BatchNorm(channels)
    bn.update({"weight": mx.array(rng.uniform(0.5, 1.5, channels).astype(np.float32)),
               "bias": mx.array(rng.normal(0, 0.2, channels).astype(np.float32)),
               "running_mean": mx.array(rng.normal(0, 0.3, channels).astype(np.float32)),
               "running_var": mx.array(rng.uniform(0.5, 2.0, channels).astype(np.float32))})
    bn.eval()
    return bn


def _as_nn_batch_norm(bn: BatchNorm, y: mx.array) -> mx.array:
    """MLX's own BatchNorm formula on the same parameters: the reference."""
    return nn.BatchNorm.__call__(bn, y)


def _output_and_grad(f, x: mx.array, w: mx.array) -> tuple[mx.array, mx.array]:
    return f(x), mx.grad(lambda z: (f(z) * w).sum())(x)


@pytest.mark.parametrize("kernel, stride, padding, bias", [
    (1, 1, 0, False),       # a matrix product
    (3, 1, 1, False),       # Winograd (32 channels, 25 tiles)
    (3, 2, 1, False),       # phases as channels
    (1, 2, 0, False),       # resnet50's projection shortcut
    (3, 1, 1, True),        # a conv with its own bias folds it in too
])
def test_folded_conv_matches_conv_then_batch_norm(kernel, stride, padding, bias):
    mx.random.seed(kernel + stride + padding)
    conv = Conv2d(32, 24, kernel, stride=stride, padding=padding, bias=bias)
    if bias:
        conv.bias = mx.random.normal((24,))
    bn = _random_bn(24, seed=kernel)
    x = mx.random.normal((2, 20, 18, 32))
    w = mx.random.normal(conv(x).shape)
    ref_out, ref_grad = _output_and_grad(lambda z: _as_nn_batch_norm(bn, conv(z)), x, w)
    with constant_weights():
        out, grad = _output_and_grad(lambda z: conv2d_bn(conv, bn, z), x, w)
    assert _rel(out, ref_out) < 1e-5 and _rel(grad, ref_grad) < 1e-5
    as_called, as_called_grad = _output_and_grad(lambda z: conv2d_bn(conv, bn, z), x, w)
    assert _rel(as_called, ref_out) < 1e-5 and _rel(as_called_grad, ref_grad) < 1e-5


def test_inference_batch_norm_matches_mlx_formula():
    bn = _random_bn(16, seed=3)
    y = mx.random.normal((1, 7, 5, 16)) * 3
    assert _rel(bn(y), _as_nn_batch_norm(bn, y)) < 1e-6
    with constant_weights():
        assert _rel(bn(y), _as_nn_batch_norm(bn, y)) < 1e-6


def test_training_mode_uses_batch_statistics_even_with_constant_weights():
    conv, bn = Conv2d(8, 8, 3, padding=1, bias=False), _random_bn(8, seed=5)
    bn.train()
    x = mx.random.normal((4, 6, 6, 8))
    y = conv(x)
    with constant_weights():
        out = conv2d_bn(conv, bn, x)
    flat = y.reshape(-1, 8)
    expected = (y - flat.mean(0)) * mx.rsqrt(flat.var(0) + bn.eps) * bn.weight + bn.bias
    assert _rel(out, expected) < 1e-5


def test_fold_is_computed_once_and_follows_the_weights():
    conv, bn = Conv2d(16, 16, 1, bias=False), _random_bn(16, seed=7)
    seen: list[mx.array] = []

    def spy(x: mx.array, weight: mx.array, bias: mx.array | None, *ending: object) -> mx.array:
        seen.append(weight)
        return Conv2d.convolve(conv, x, weight, bias, *ending)

    conv.convolve = spy
    x = mx.random.normal((1, 4, 4, 16))

    def reference() -> mx.array:
        return _as_nn_batch_norm(bn, Conv2d.convolve(conv, x, conv.weight, None))

    with constant_weights():
        conv2d_bn(conv, bn, x)
        conv2d_bn(conv, bn, x)
        assert seen[1] is seen[0]                       # the cached fold, not a new one
        conv.weight = conv.weight * 2                   # new weights (load_weights, a training update)
        assert _rel(conv2d_bn(conv, bn, x), reference()) < 1e-5
        bn.running_var = bn.running_var * 4             # new statistics fold again too
        assert _rel(conv2d_bn(conv, bn, x), reference()) < 1e-5
    assert len({id(w) for w in seen}) == 3


def test_gradients_reach_every_parameter_outside_constant_weights():
    """Frozen-BN fine-tuning differentiates the weights of an inference BatchNorm's block: no fold there."""
    conv, bn = Conv2d(8, 8, 3, padding=1, bias=False), _random_bn(8, seed=9)
    x = mx.random.normal((1, 6, 6, 8))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = conv, bn

    block = Block()
    block.eval()

    def grads(forward) -> dict:
        return nn.value_and_grad(block, lambda: (forward() ** 2).sum())()[1]

    ours = grads(lambda: conv2d_bn(block.conv, block.bn, x))
    ref = grads(lambda: _as_nn_batch_norm(block.bn, block.conv(x)))
    assert _rel(ours["conv"]["weight"], ref["conv"]["weight"]) < 1e-5
    for key in ("weight", "bias"):
        assert _rel(ours["bn"][key], ref["bn"][key]) < 1e-5 and float(mx.abs(ref["bn"][key]).max()) > 0


def test_dream_step_folds_the_batch_norms():
    from deepdream.objectives import build_objective
    from deepdream.step import make_step
    from models import build_model

    model = build_model("resnet50")
    model.eval()
    step = make_step(model, build_objective(model, ["layer1_0"]))
    state = step.space.encode(np.random.default_rng(0).uniform(0, 1, (64, 64, 3)).astype(np.float32))
    step(state, (1, 2), 0.5, 0.01)
    block = model.layer1[0]
    folded = [getattr(bn, "_cached_fold", None) for bn in (block.bn1, block.bn2, block.bn3, block.downsample[1])]
    assert all(f is not None for f in folded)
    # the stem's conv1 -> bn1 -> relu stages run as one convolution when only a deeper layer is asked
    # for (models.base.fused_stages), and as stages of their own when bn1 is
    assert getattr(model.bn1, "_cached_fold", None) is not None
    assert getattr(model.bn1, "_cached_affine", None) is None
    step = make_step(model, build_objective(model, ["bn1"]))
    step(state, (1, 2), 0.5, 0.01)
    assert getattr(model.bn1, "_cached_affine", None) is not None
    assert getattr(model.layer2[0].bn1, "_cached_fold", None) is None  # past the deepest layer: never run

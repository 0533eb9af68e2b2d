"""fastlayers.depthwise: exact against MLX's own grouped conv, forward and both gradients."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from fastlayers.depthwise import _resolve_padding, depthwise_conv2d, same_padding


# every test on both CPU paths: the native kernel and the pure-MLX shifted multiply-adds
pytestmark = pytest.mark.usefixtures("cpu_kernels")

# (batch, height, width, channels, kernel, stride, padding): odd and even sizes, sizes that
# leave the TF-SAME extra pixel on one side only, explicit asymmetric and over-wide padding,
# a kernel larger than the stride's phase count, 1x1 kernels, 1-pixel inputs and wide channels.
CASES = [
    (2, 9, 7, 5, 3, 1, "same"),
    (1, 9, 7, 5, 3, 2, "same"),
    (2, 10, 13, 4, 5, 2, "same"),
    (1, 11, 11, 3, 5, 1, 2),
    (1, 8, 9, 3, 5, 2, 2),
    (1, 7, 6, 2, 3, 3, "same"),
    (1, 6, 6, 2, 1, 2, "same"),
    (1, 5, 7, 3, 3, 1, ((0, 3), (4, 0))),
    (1, 8, 8, 2, 5, 2, ((3, 0), (0, 1))),
    (2, 6, 5, 3, 3, 1, 3),
    (3, 1, 1, 4, 3, 2, "same"),
    # 40 channels: two whole 16-channel vectors and a remainder, through the native kernel's
    # register-summed interior and its general border loop alike
    (1, 12, 11, 40, 5, 1, "same"),
    (2, 9, 10, 40, 3, 2, "same"),
    (1, 8, 7, 40, 3, 1, ((0, 2), (2, 1))),
    # rows wide enough for the native kernel's runs of pixels summed side by side (8 or 4 at a
    # time, then the rest one by one), at every stride phase, with edges on both sides
    (1, 5, 37, 32, 3, 1, "same"),
    (1, 6, 41, 48, 5, 2, "same"),
    (2, 7, 30, 16, 3, 2, ((1, 1), (0, 2))),
    (1, 4, 29, 20, 5, 3, "same"),
]


def _reference(x: mx.array, weight: mx.array, stride: int, padding) -> mx.array:
    c, kh, kw, _ = weight.shape
    top, bottom, left, right = _resolve_padding(padding, x.shape[1], x.shape[2], kh, kw, stride)
    return mx.conv2d(mx.pad(x, [(0, 0), (top, bottom), (left, right), (0, 0)]), weight, stride=stride, groups=c)


def _rel(a: mx.array, b: mx.array) -> float:
    return float(mx.abs(a - b).max() / mx.maximum(mx.abs(b).max(), 1e-12))


@pytest.mark.parametrize("n,h,w,c,k,stride,padding", CASES)
def test_matches_grouped_conv_forward_and_gradients(n, h, w, c, k, stride, padding):
    mx.random.seed(h * 100 + w * 10 + k + stride)
    x = mx.random.normal((n, h, w, c))
    weight = mx.random.normal((c, k, k, 1))
    expected = _reference(x, weight, stride, padding)
    cotangent = mx.random.normal(expected.shape)

    def ours(x, weight):
        return (depthwise_conv2d(x, weight, stride, padding) * cotangent).sum()

    def theirs(x, weight):
        return (_reference(x, weight, stride, padding) * cotangent).sum()

    out = depthwise_conv2d(x, weight, stride, padding)
    assert out.shape == expected.shape
    assert _rel(out, expected) < 1e-5
    dx, dw = mx.grad(ours, argnums=(0, 1))(x, weight)
    ex, ew = mx.grad(theirs, argnums=(0, 1))(x, weight)
    assert dx.shape == x.shape and dw.shape == weight.shape
    assert _rel(dx, ex) < 1e-5
    assert _rel(dw, ew) < 1e-5
    # the same under mx.compile (the dream engine compiles its gradient step)
    cx, cw = mx.compile(mx.grad(ours, argnums=(0, 1)))(x, weight)
    assert _rel(cx, ex) < 1e-5
    assert _rel(cw, ew) < 1e-5


def test_bias_forward_and_gradient():
    mx.random.seed(5)
    x = mx.random.normal((2, 7, 9, 4))
    weight = mx.random.normal((4, 3, 3, 1))
    bias = mx.random.normal((4,))
    cotangent = mx.random.normal((2, 4, 5, 4))

    def ours(x, weight, bias):
        return (depthwise_conv2d(x, weight, 2, "same", bias=bias) * cotangent).sum()

    def theirs(x, weight, bias):
        return ((_reference(x, weight, 2, "same") + bias) * cotangent).sum()

    assert _rel(depthwise_conv2d(x, weight, 2, "same", bias=bias), _reference(x, weight, 2, "same") + bias) < 1e-5
    for got, want in zip(mx.grad(ours, argnums=(0, 1, 2))(x, weight, bias),
                         mx.grad(theirs, argnums=(0, 1, 2))(x, weight, bias)):
        assert got.shape == want.shape and _rel(got, want) < 1e-5
    with pytest.raises(ValueError):
        depthwise_conv2d(x, weight, 2, "same", bias=mx.zeros((3,)))


def test_same_padding_is_tensorflows():
    # total = max((ceil(in/s) - 1) * s + k - in, 0); the odd pixel goes after
    assert same_padding(224, 3, 2) == (0, 1)
    assert same_padding(225, 3, 2) == (1, 1)
    assert same_padding(28, 5, 2) == (1, 2)
    assert same_padding(14, 5, 1) == (2, 2)
    assert same_padding(1, 5, 2) == (2, 2)
    assert same_padding(6, 1, 2) == (0, 0)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = mx.random.normal((6, 3, 3, 1))

    def __call__(self, x: mx.array) -> mx.array:
        return depthwise_conv2d(x, self.weight, stride=2, padding="same")


def test_parameter_gradient_with_value_and_grad():
    mx.random.seed(3)
    model = _Tiny()
    x = mx.random.normal((2, 9, 8, 6))
    target = mx.random.normal((2, 5, 4, 6))

    def loss(x):
        return ((model(x) - target) ** 2).mean()

    step = nn.value_and_grad(model, loss)
    value, grads = step(x)

    def reference_loss(weight):
        return ((_reference(x, weight, 2, "same") - target) ** 2).mean()

    expected = mx.grad(reference_loss)(model.weight)
    assert abs(float(value) - float(reference_loss(model.weight))) < 1e-5 * abs(float(value))
    assert _rel(grads["weight"], expected) < 1e-5
    # and compiled, as a training step would be
    _, compiled_grads = mx.compile(step, inputs=model.state, outputs=model.state)(x)
    assert _rel(compiled_grads["weight"], expected) < 1e-5


def test_second_call_with_other_shape_uses_its_own_padding():
    mx.random.seed(4)
    weight = mx.random.normal((2, 5, 5, 1))
    f = mx.compile(lambda x: depthwise_conv2d(x, weight, 2, "same"))
    for size in (7, 8):
        x = mx.random.normal((1, size, size, 2))
        np.testing.assert_allclose(np.array(f(x)), np.array(_reference(x, weight, 2, "same")), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,weight_shape,padding", [
    ((1, 5, 5, 3), (4, 3, 3, 1), "same"),       # channel mismatch
    ((1, 5, 5, 3), (3, 3, 3, 2), "same"),       # not depthwise
    ((5, 5, 3), (3, 3, 3, 1), "same"),          # not NHWC
    ((1, 2, 2, 3), (3, 5, 5, 1), 0),            # kernel larger than the padded input
    ((1, 5, 5, 3), (3, 3, 3, 1), "valid"),      # unknown padding name
])
def test_bad_arguments_raise_value_error(shape, weight_shape, padding):
    with pytest.raises(ValueError):
        depthwise_conv2d(mx.zeros(shape), mx.zeros(weight_shape), 1, padding)



@pytest.mark.parametrize("activation", ["relu", "relu6"])
@pytest.mark.parametrize("stride", [1, 2])
def test_activation_joins_the_convolution(activation: str, stride: int) -> None:
    """depthwise_conv2d(..., activation) equals the convolution followed by MLX's activation, forward
    and every gradient (the same pre-activation numbers: every kink decided alike)."""
    from fastlayers.activation import finish

    mx.random.seed(11)
    x = 3 * mx.random.normal((1, 16, 17, 40))
    weight, bias = mx.random.normal((40, 5, 5, 1)), mx.random.normal((40,))
    fused = depthwise_conv2d(x, weight, stride, "same", bias, activation)
    separate = finish(depthwise_conv2d(x, weight, stride, "same", bias), activation=activation)
    assert _rel(fused, separate) < 1e-6
    assert 0 < float((separate == 0).mean()) < 0.9
    if activation == "relu6":
        assert 0 < float((separate == 6).mean()) < 0.5
    up = mx.random.normal(fused.shape)
    grads = [mx.grad(lambda a, w, b, act=act: (f(a, w, b, act) * up).sum(), argnums=(0, 1, 2))(x, weight, bias)
             for f, act in ((lambda a, w, b, act: depthwise_conv2d(a, w, stride, "same", b, act), activation),
                            (lambda a, w, b, act: finish(depthwise_conv2d(a, w, stride, "same", b), activation=act),
                             activation))]
    for a, b in zip(*grads):
        assert _rel(a, b) < 1e-5


@pytest.mark.parametrize("n,h,w,c,k,stride,padding", [
    (2, 13, 21, 24, 3, 1, "same"),
    (2, 14, 19, 20, 5, 2, "same"),
    (1, 12, 17, 16, 5, 1, 2),
    (1, 11, 18, 24, 3, 2, ((1, 1), (0, 2))),
    (2, 9, 12, 8, 3, 3, "same"),
    (1, 6, 20, 16, 5, 1, ((4, 0), (1, 3))),
])
def test_input_gradient_alone_masks_by_the_activation(n, h, w, c, k, stride, padding) -> None:
    """Dreaming asks for the input's gradient only: the native kernel then masks the gradient rows
    by the activation as it reads them, image after image (a batch of 2) and row after row; the
    same as MLX's ReLU6 after the convolution, at every stride, kernel and padding here."""
    from fastlayers.activation import finish

    mx.random.seed(h * 10 + w + k)
    x = 3 * mx.random.normal((n, h, w, c))
    weight, bias = mx.random.normal((c, k, k, 1)), mx.random.normal((c,))
    up = mx.random.normal(depthwise_conv2d(x, weight, stride, padding, bias).shape)

    def fused(a):
        return (depthwise_conv2d(a, weight, stride, padding, bias, "relu6") * up).sum()

    def separate(a):
        return (finish(depthwise_conv2d(a, weight, stride, padding, bias), activation="relu6") * up).sum()

    masked = finish(depthwise_conv2d(x, weight, stride, padding, bias), activation="relu6")
    assert 0.1 < float(((masked > 0) & (masked < 6)).mean()) < 0.9     # the mask cuts somewhere
    expected = mx.grad(separate)(x)
    assert _rel(mx.grad(fused)(x), expected) < 1e-5
    assert _rel(mx.compile(mx.grad(fused))(x), expected) < 1e-5

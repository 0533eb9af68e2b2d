"""fastlayers.activation: how a convolution ends, the MLX form and the native kernels' alike, at torch's kinks."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch

from fastlayers.activation import ACTIVATIONS, finish, relu6
from fastlayers.conv import conv2d
from fastlayers.depthwise import depthwise_conv2d

#: Values on and around both kinks of ReLU and ReLU6.
KINKS = [-1.0, 0.0, 3.0, 6.0, 7.0]


def test_relu6_gradient_is_torchs_at_the_kinks() -> None:
    tx = torch.tensor(KINKS, requires_grad=True)
    torch.nn.functional.relu6(tx).sum().backward()
    grad = mx.grad(lambda v: relu6(v).sum())(mx.array(KINKS))
    np.testing.assert_array_equal(np.array(grad), tx.grad.numpy())
    np.testing.assert_array_equal(np.array(relu6(mx.array(KINKS))), [0.0, 0.0, 3.0, 6.0, 6.0])


@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_convolutions_end_at_torchs_kinks(activation: str, cpu_kernels: str) -> None:
    """An identity 1x1 and an identity depthwise convolution ending in the activation give torch's
    values and gradients exactly on the kinks (the gradient is 0 at ReLU's 0 and ReLU6's 0 and 6)."""
    values = np.array(KINKS * 4, np.float32).reshape(1, 4, 5, 1)
    x = mx.array(np.repeat(values, 16, axis=-1))           # 16 channels: the native kernels' width
    eye = mx.eye(16).reshape(16, 1, 1, 16)
    one = mx.zeros((16, 3, 3, 1)).at[:, 1, 1, 0].add(1.0)
    tx = torch.tensor(np.array(x), requires_grad=True)
    reference = torch.nn.functional.relu(tx) if activation == "relu" else torch.nn.functional.relu6(tx)
    reference.sum().backward()
    for convolve in (lambda a: conv2d(a, eye, activation=activation),
                     lambda a: depthwise_conv2d(a, one, 1, 1, activation=activation)):
        np.testing.assert_array_equal(np.array(convolve(x)), reference.detach().numpy())
        np.testing.assert_array_equal(np.array(mx.grad(lambda a: convolve(a).sum())(x)), tx.grad.numpy())


def test_finish_adds_then_activates_and_refuses_unknown_names() -> None:
    y, bias, residual = mx.array([[-2.0, 1.0]]), mx.array([1.0, 1.0]), mx.array([[0.5, 5.0]])
    np.testing.assert_array_equal(np.array(finish(y, bias, residual, "relu6")), [[0.0, 6.0]])
    np.testing.assert_array_equal(np.array(finish(y, bias, residual)), [[-0.5, 7.0]])
    assert ACTIVATIONS[0] is None
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        finish(y, activation="gelu")

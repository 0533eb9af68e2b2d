"""models.base: a convolution stage and the ReLU stage after it run as one convolution when only the ReLU is wanted."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from fastlayers.batchnorm import BatchNorm, constant_weights
from fastlayers.conv import Conv2d
from models.base import DreamModel


class Tiny(DreamModel):
    NAME = "tiny"
    LAYER_NAMES = ("conv1", "relu1", "conv2", "bn2", "relu2")

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = Conv2d(3, 16, 3, padding=1)
        self.conv2 = Conv2d(16, 16, 3, padding=1)
        self.bn2 = BatchNorm(16)

    def stages(self):
        return [("conv1", self.conv1), ("relu1", nn.relu), ("conv2", self.conv2), ("bn2", self.bn2),
                ("relu2", nn.relu), ("logits", lambda x: x.mean(axis=(1, 2)))]


@pytest.mark.parametrize("outputs,fused", [
    (["relu2"], ["relu", "relu"]),              # conv1+relu1 and conv2+bn2+relu2 each one convolution
    (["relu1", "relu2"], ["relu", "relu"]),
    (["conv1", "relu2"], [None, "relu"]),       # conv1's own output is wanted: it runs alone
    (["bn2"], ["relu", None]),                  # so is conv2's when bn2's is
])
def test_convolutions_end_in_the_relu_after_them(outputs: list[str], fused: list, monkeypatch) -> None:
    model = Tiny()
    model.eval()
    model.bn2.running_mean = mx.random.normal((16,))
    model.bn2.running_var = mx.random.uniform(0.5, 2.0, (16,))
    x = mx.random.normal((1, 12, 12, 3))
    endings: list = []
    real = Conv2d.convolve

    def spy(self, x, weight, bias, activation=None, residual=None):
        endings.append(activation)
        return real(self, x, weight, bias, activation, residual)

    with constant_weights():
        expected = {}
        y = x
        for name, stage in model.stages():      # every stage on its own, by hand
            y = stage(y)
            expected[name] = y
        monkeypatch.setattr(Conv2d, "convolve", spy)
        got = model(x, outputs=outputs)
    assert endings == fused
    assert set(got) == set(outputs)
    for name in outputs:
        np.testing.assert_allclose(np.array(got[name]), np.array(expected[name]), rtol=1e-5, atol=1e-5)

"""torchvision's Inception v3 in MLX, NHWC.

Module attributes carry torchvision's names (``Mixed_6b.branch7x7_2.conv.weight``), so the
conversion is the generic OIHW -> OHWI transpose; the auxiliary classifier (``AuxLogits``) is
not ported and its keys are dropped. The ImageNet weights expect ``transform_input=True``,
which the first stage reproduces.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from fastlayers.concat import concat_channels
from fastlayers.pooling import avg_pool2d, max_pool2d

from .base import ModelFacts, Recipe, Stage
from .googlenet import TORCHVISION_RANDOM_INIT, BasicConv2d, InceptionBase, MaxPool2d


def _branch_pool(x: mx.array) -> mx.array:
    # torchvision: F.avg_pool2d(x, 3, stride=1, padding=1), zero padding counted in the mean
    return avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def __call__(self, x: mx.array) -> mx.array:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_branch_pool(x))
        return concat_channels([b1, b5, b3, bp])


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def __call__(self, x: mx.array) -> mx.array:
        b3 = self.branch3x3(x)
        b3d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = max_pool2d(x, 3, stride=2)
        return concat_channels([b3, b3d, bp])


class InceptionC(nn.Module):
    """Factorised 7x7 convolutions (1x7 then 7x1)."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def __call__(self, x: mx.array) -> mx.array:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                     self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7d = conv(b7d)
        bp = self.branch_pool(_branch_pool(x))
        return concat_channels([b1, b7, b7d, bp])


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def __call__(self, x: mx.array) -> mx.array:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for conv in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = conv(b7)
        bp = max_pool2d(x, 3, stride=2)
        return concat_channels([b3, b7, bp])


class InceptionE(nn.Module):
    """Expanded filter bank: 1x3 and 3x1 side by side (8x8 grid)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def __call__(self, x: mx.array) -> mx.array:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = [self.branch3x3_2a(b3), self.branch3x3_2b(b3)]
        b3d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3d = [self.branch3x3dbl_3a(b3d), self.branch3x3dbl_3b(b3d)]
        bp = self.branch_pool(_branch_pool(x))
        return concat_channels([b1, *b3, *b3d, bp])


class InceptionV3(InceptionBase):
    NAME = "inception_v3"
    LAYER_NAMES = (
        "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
        "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
        "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c",
    )
    # TensorFlow's DeepDream tutorial pair for InceptionV3 (Keras "mixed3" and "mixed5").
    DEFAULT_LAYERS = ("Mixed_6a", "Mixed_6c")
    # Below 75 px Mixed_7a's stride-2 3x3 convolution has no window left (torchvision's min_size).
    MIN_INPUT_SIZE = 75

    def __init__(self, num_classes: int = 1000, transform_input: bool = True, dropout: float = 0.5) -> None:
        super().__init__(transform_input, dropout)
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = MaxPool2d(3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = MaxPool2d(3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.fc = nn.Linear(2048, num_classes)

    def stages(self) -> list[Stage]:
        trunk = [(name, getattr(self, name)) for name in self.LAYER_NAMES]
        return [("transform_input", self._transform), *trunk, ("avgpool", self._pool), ("logits", self.fc)]


def build(num_classes: int = 1000, **config: Any) -> InceptionV3:
    """A freshly initialised Inception v3; ``config``: transform_input, dropout."""
    return InceptionV3(num_classes=num_classes, **config)


MODELS = (
    ModelFacts(
        "inception_v3", build, exporter="python export_inception_v3.py", classifier_weight="fc.weight",
        freeze_to="Mixed_5d",
        torchvision="inception_v3", torchvision_weights="Inception_V3_Weights.IMAGENET1K_V1",
        torchvision_random_init=TORCHVISION_RANDOM_INIT,
        aux_prefixes=("AuxLogits.",),   # not ported: the converter drops its keys
        recipes={
            # Chosen by analogy with googlenet's recipe: no real weights could be loaded here to look at.
            "inception_v3": Recipe(("Mixed_5d", "Mixed_6b"), steps=20, lr=0.065, octaves=4, scale=1.6,
                                   jitter=30, smoothing=0.2,
                                   description="by analogy with googlenet (not tuned on real weights)"),
        },
    ),
)

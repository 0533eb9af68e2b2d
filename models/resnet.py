"""torchvision's ResNet50 (v1.5: the stride sits on the 3x3 conv) in MLX, NHWC.

Parameter paths are torchvision's state-dict keys (``layer1.0.conv1.weight``,
``layer1.0.downsample.0.weight``, ``bn1.running_mean``), so the conversion is the plain
OIHW -> OHWI transpose of the converter. Each bottleneck block is a
stage (``layer3_2`` = ``layer3[2]``), so a dream on layer3 never runs layer4. Convolutions are
``fastlayers.conv.Conv2d``: nn.Conv2d's parameters and keys, with a fast CPU input gradient
(MLX's own is a naive loop for the strided ones).
BatchNorms are ``fastlayers.batchnorm.BatchNorm`` (nn.BatchNorm's keys); the dream step folds each
into the convolution before it (``conv2d_bn``).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from fastlayers.batchnorm import BatchNorm, conv2d_bn
from fastlayers.conv import Conv2d
from fastlayers.pooling import global_avg_pool, max_pool2d

from .base import DreamModel, ModelFacts, Recipe, Stage

#: bottleneck blocks per stage and their inner widths (torchvision's resnet50: [3, 4, 6, 3]).
LAYERS = (3, 4, 6, 3)
WIDTHS = (64, 128, 256, 512)
EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand, plus the identity or a projected shortcut."""

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = BatchNorm(width)
        self.conv2 = Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = BatchNorm(width)
        self.conv3 = Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = BatchNorm(out_channels)
        # A list, so its keys are torchvision's downsample.0 / downsample.1; empty when the
        # shortcut is the identity (no parameters, nothing to convert).
        self.downsample: list[nn.Module] = []
        if stride != 1 or in_channels != out_channels:
            self.downsample = [Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                               BatchNorm(out_channels)]

    def __call__(self, x: mx.array) -> mx.array:
        # Each convolution ends in its ReLU, the last one after adding the shortcut, in the
        # convolution's own pass (fastlayers.activation).
        shortcut = conv2d_bn(*self.downsample, x) if self.downsample else x
        out = conv2d_bn(self.conv1, self.bn1, x, activation="relu")
        out = conv2d_bn(self.conv2, self.bn2, out, activation="relu")
        return conv2d_bn(self.conv3, self.bn3, out, activation="relu", residual=shortcut)


def _maxpool(x: mx.array) -> mx.array:
    return max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNet50(DreamModel):
    NAME = "resnet50"
    LAYER_NAMES = ("conv1", "bn1", "relu", "maxpool") + tuple(
        f"layer{s}_{b}" for s, blocks in enumerate(LAYERS, start=1) for b in range(blocks))
    DEFAULT_LAYERS = ("layer3_2", "layer3_5")
    # Any side >= 1 runs (torchvision's meta says (1, 1)), but below 32 px layer4 is already a
    # single cell and the deep layers see almost only padding: too small to dream on.
    MIN_INPUT_SIZE = 32

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = BatchNorm(64)
        in_channels = 64
        for s, (blocks, width) in enumerate(zip(LAYERS, WIDTHS), start=1):
            stride = 1 if s == 1 else 2
            layer = []
            for b in range(blocks):
                layer.append(Bottleneck(in_channels, width, stride if b == 0 else 1))
                in_channels = width * EXPANSION
            setattr(self, f"layer{s}", layer)
        self.fc = nn.Linear(in_channels, num_classes)

    def stages(self) -> list[Stage]:
        out: list[Stage] = [("conv1", self.conv1), ("bn1", self.bn1), ("relu", nn.relu), ("maxpool", _maxpool)]
        for s, blocks in enumerate(LAYERS, start=1):
            layer = getattr(self, f"layer{s}")
            out += [(f"layer{s}_{b}", layer[b]) for b in range(blocks)]
        out += [("avgpool", global_avg_pool), ("logits", self.fc)]
        return out


def build(num_classes: int = 1000, **config: Any) -> DreamModel:
    if config:
        raise TypeError(f"unexpected ResNet50 options: {', '.join(sorted(config))}")
    return ResNet50(num_classes=num_classes)


MODELS = (
    ModelFacts(
        "resnet50", build, exporter="python export_resnet.py", classifier_weight="fc.weight",
        freeze_to="layer2_3",
        torchvision="resnet50", torchvision_weights="ResNet50_Weights.IMAGENET1K_V1",
        recipes={
            # The published settings of a tool built on pytorch-deepdream's step, run here unchanged.
            "resnet50": Recipe(("layer3_2", "layer3_5"), steps=22, lr=0.13, octaves=4, scale=2.0, jitter=83,
                               smoothing=0.47, description="ResNet50 stage 3: swirling animal parts"),
        },
    ),
)

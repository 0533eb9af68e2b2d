"""torchvision's AlexNet (the "one weird trick" variant: 64/192/384/256/256 channels) in MLX, NHWC.

The MLX modules carry the dream-layer names; the converter renames the keys (``TORCH_KEYS``):

    torch key        MLX key       torch key         MLX key
    features.0       conv1         classifier.1      fc6
    features.3       conv2         classifier.4      fc7
    features.6       conv3         classifier.6      fc8
    features.8       conv4
    features.10      conv5

and reorders fc6's columns from torch's (C, H, W) flatten to our (H, W, C) one. Convolutions are
``fastlayers.conv.Conv2d``: nn.Conv2d's parameters and keys, with a fast CPU input gradient (the
stride-4 conv1's is otherwise MLX's naive loop).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from fastlayers.conv import Conv2d
from fastlayers.pooling import adaptive_avg_pool2d, max_pool2d

from .base import DreamModel, ModelFacts, Stage, prefix_renamer

POOL_SIZE = 6   # torchvision's AdaptiveAvgPool2d((6, 6)) before the classifier
TORCH_KEYS = {
    "features.0": "conv1", "features.3": "conv2", "features.6": "conv3", "features.8": "conv4",
    "features.10": "conv5", "classifier.1": "fc6", "classifier.4": "fc7", "classifier.6": "fc8",
}


def _pool(x: mx.array) -> mx.array:
    return max_pool2d(x, kernel_size=3, stride=2)


def _avgpool_flatten(x: mx.array) -> mx.array:
    # Adaptive pooling makes non-224 inputs match torchvision; NHWC flatten order (see fc6).
    x = adaptive_avg_pool2d(x, (POOL_SIZE, POOL_SIZE))
    return x.reshape(x.shape[0], -1)


class AlexNet(DreamModel):
    NAME = "alexnet"
    LAYER_NAMES = ("conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3",
                   "conv4", "relu4", "conv5", "relu5", "pool5")
    DEFAULT_LAYERS = ("relu5",)
    # conv1 (11/4, pad 2) then three 3/2 max pools: 63 px leaves pool5 at 1x1, 62 px at 0x0
    # (torchvision's meta says min_size (63, 63) too).
    MIN_INPUT_SIZE = 63

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = Conv2d(3, 64, kernel_size=11, stride=4, padding=2)
        self.conv2 = Conv2d(64, 192, kernel_size=5, padding=2)
        self.conv3 = Conv2d(192, 384, kernel_size=3, padding=1)
        self.conv4 = Conv2d(384, 256, kernel_size=3, padding=1)
        self.conv5 = Conv2d(256, 256, kernel_size=3, padding=1)
        # torchvision puts dropout before fc6 and fc7 (not after, as in VGG).
        self.drop6 = nn.Dropout(0.5)
        self.fc6 = nn.Linear(256 * POOL_SIZE * POOL_SIZE, 4096)
        self.drop7 = nn.Dropout(0.5)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)

    def stages(self) -> list[Stage]:
        return [
            ("conv1", self.conv1), ("relu1", nn.relu), ("pool1", _pool),
            ("conv2", self.conv2), ("relu2", nn.relu), ("pool2", _pool),
            ("conv3", self.conv3), ("relu3", nn.relu),
            ("conv4", self.conv4), ("relu4", nn.relu),
            ("conv5", self.conv5), ("relu5", nn.relu), ("pool5", _pool),
            ("avgpool", _avgpool_flatten),
            ("drop6", self.drop6), ("fc6", self.fc6), ("relu6", nn.relu),
            ("drop7", self.drop7), ("fc7", self.fc7), ("relu7", nn.relu),
            ("logits", self.fc8),
        ]


def build(num_classes: int = 1000, **config: Any) -> DreamModel:
    if config:
        raise TypeError(f"unexpected AlexNet options: {', '.join(sorted(config))}")
    return AlexNet(num_classes=num_classes)


MODELS = (
    ModelFacts(
        "alexnet", build, exporter="python export_alexnet.py", classifier_weight="fc8.weight",
        freeze_to="pool2",
        torchvision="alexnet", torchvision_weights="AlexNet_Weights.IMAGENET1K_V1",
        rename=prefix_renamer(TORCH_KEYS, "alexnet"),
        flattened=("fc6.weight", 256, POOL_SIZE, POOL_SIZE),
    ),
)

"""torchvision's VGG16 and VGG19 (no batch norm) in MLX, NHWC, one stage per conv / ReLU / pool.

The MLX modules are named by their classic dream-layer names (``conv4_2``) rather than by
torchvision's ``features.N`` indices, so parameter paths read like the layers users ask for.
The converter renames the keys through ``torch_keys``; for VGG16 the table is

    torch key            MLX key        torch key            MLX key
    features.0           conv1_1        features.17          conv4_1
    features.2           conv1_2        features.19          conv4_2
    features.5           conv2_1        features.21          conv4_3
    features.7           conv2_2        features.24          conv5_1
    features.10          conv3_1        features.26          conv5_2
    features.12          conv3_2        features.28          conv5_3
    features.14          conv3_3        classifier.0         fc6
                                        classifier.3         fc7
                                        classifier.6         fc8

and for VGG19 (four convs in blocks 3-5): conv3_1..conv3_4 = features.10/12/14/16,
conv4_1..conv4_4 = 19/21/23/25, conv5_1..conv5_4 = 28/30/32/34. Both follow torchvision's
``make_layers`` rule (every conv is followed by its ReLU, every block ends in a max pool),
which ``feature_keys`` reproduces.

Convolutions are ``fastlayers.conv.Conv2d``: nn.Conv2d's parameters and keys, with a fast CPU
input gradient (a dream differentiates every step w.r.t. the image).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from fastlayers.conv import Conv2d
from fastlayers.pooling import adaptive_avg_pool2d, max_pool2d

from .base import DreamModel, ModelFacts, Recipe, Stage, prefix_renamer

#: convs per block for each depth (torchvision's cfgs "D" and "E"); the widths are shared.
BLOCKS: dict[int, tuple[int, ...]] = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
WIDTHS = (64, 128, 256, 512, 512)
POOL_SIZE = 7   # torchvision's AdaptiveAvgPool2d((7, 7)) before the classifier


def _block_layer_names(blocks: tuple[int, ...]) -> tuple[str, ...]:
    names: list[str] = []
    for b, convs in enumerate(blocks, start=1):
        for i in range(1, convs + 1):
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
        names.append(f"pool{b}")
    return tuple(names)


def feature_keys(depth: int) -> dict[str, str]:
    """torchvision ``features.N`` prefix -> MLX conv name, following ``make_layers``' indexing."""
    mapping: dict[str, str] = {}
    index = 0
    for b, convs in enumerate(BLOCKS[depth], start=1):
        for i in range(1, convs + 1):
            mapping[f"features.{index}"] = f"conv{b}_{i}"
            index += 2          # Conv2d, ReLU
        index += 1              # MaxPool2d
    return mapping


def _pool(x: mx.array) -> mx.array:
    return max_pool2d(x, kernel_size=2, stride=2)


class VGG(DreamModel):
    """VGG without batch norm; subclasses fix the depth so NAME and LAYER_NAMES are class constants."""

    DEPTH: int = 16
    MIN_INPUT_SIZE = 32   # five 2x2 pools: 32 px leaves pool5 at 1x1, 31 px at 0x0

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        in_channels = 3
        for b, (convs, width) in enumerate(zip(BLOCKS[self.DEPTH], WIDTHS), start=1):
            for i in range(1, convs + 1):
                setattr(self, f"conv{b}_{i}", Conv2d(in_channels, width, kernel_size=3, padding=1))
                in_channels = width
        self.fc6 = nn.Linear(WIDTHS[-1] * POOL_SIZE * POOL_SIZE, 4096)
        self.drop6 = nn.Dropout(0.5)
        self.fc7 = nn.Linear(4096, 4096)
        self.drop7 = nn.Dropout(0.5)
        self.fc8 = nn.Linear(4096, num_classes)

    @staticmethod
    def _avgpool_flatten(x: mx.array) -> mx.array:
        # Adaptive pooling makes non-224 inputs match torchvision; flattening is NHWC (H, W, C)
        # order, which the converter accounts for by reordering fc6's columns.
        x = adaptive_avg_pool2d(x, (POOL_SIZE, POOL_SIZE))
        return x.reshape(x.shape[0], -1)

    def stages(self) -> list[Stage]:
        out: list[Stage] = []
        for name in _block_layer_names(BLOCKS[self.DEPTH]):
            if name.startswith("conv"):
                out.append((name, getattr(self, name)))
            elif name.startswith("relu"):
                out.append((name, nn.relu))
            else:
                out.append((name, _pool))
        out += [
            ("avgpool", self._avgpool_flatten),
            ("fc6", self.fc6), ("relu6", nn.relu), ("drop6", self.drop6),
            ("fc7", self.fc7), ("relu7", nn.relu), ("drop7", self.drop7),
            ("logits", self.fc8),
        ]
        return out


class VGG16(VGG):
    NAME = "vgg16"
    DEPTH = 16
    LAYER_NAMES = _block_layer_names(BLOCKS[16])
    DEFAULT_LAYERS = ("relu4_2",)


class VGG19(VGG):
    NAME = "vgg19"
    DEPTH = 19
    LAYER_NAMES = _block_layer_names(BLOCKS[19])
    DEFAULT_LAYERS = ("relu4_2",)


_BY_DEPTH: dict[int, type[VGG]] = {16: VGG16, 19: VGG19}


def build(num_classes: int = 1000, depth: int = 16, **config: Any) -> DreamModel:
    """VGG16 or VGG19; the registry passes ``depth`` from the model name (vgg16 / vgg19)."""
    if config:
        raise TypeError(f"unexpected VGG options: {', '.join(sorted(config))}")
    if depth not in _BY_DEPTH:
        raise ValueError(f"VGG depth must be 16 or 19, not {depth}")
    return _BY_DEPTH[depth](num_classes=num_classes)


def torch_keys(depth: int) -> dict[str, str]:
    """torchvision module prefix -> MLX module name for every layer with parameters (the table above)."""
    return {**feature_keys(depth), "classifier.0": "fc6", "classifier.3": "fc7", "classifier.6": "fc8"}


def _facts(depth: int, recipes: dict[str, Recipe]) -> ModelFacts:
    name = f"vgg{depth}"
    return ModelFacts(
        name, build, exporter=f"python export_vgg.py --model {name}", classifier_weight="fc8.weight",
        freeze_to="pool3", config={"depth": depth},
        torchvision=name, torchvision_weights=f"VGG{depth}_Weights.IMAGENET1K_V1",
        # torchvision's batch-norm variants (vgg16_bn) have other keys: refused by the rename.
        rename=prefix_renamer(torch_keys(depth), name),
        flattened=("fc6.weight", WIDTHS[-1], POOL_SIZE, POOL_SIZE),
        recipes=recipes,
    )


# The recipes are the published settings of a tool built on pytorch-deepdream's step, run here unchanged.
MODELS = (
    _facts(16, {
        "vgg16": Recipe(("relu4_2",), steps=24, lr=0.07, octaves=4, scale=1.8, jitter=36, smoothing=0.19,
                        description="VGG16 mid layer: dense fur and eye textures"),
        "vgg16_relu5": Recipe(("relu5_1",), steps=24, lr=0.069, octaves=4, scale=1.8, jitter=10, smoothing=0.41,
                              description="VGG16 deep layer: animal heads and objects"),
    }),
    _facts(19, {
        "vgg19": Recipe(("relu5_2",), steps=14, lr=0.045, octaves=2, scale=1.5, jitter=27, smoothing=0.41,
                        description="VGG19 deep layer, gentle: objects emerge from the photo"),
    }),
)

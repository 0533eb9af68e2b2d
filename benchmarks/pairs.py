"""One model on both sides of the benchmark: our MLX port and the PyTorch network, same weights.

The torch side's state dict goes through our own exporter into a temporary folder and our side
loads that file, so both run exactly the same numbers (random init for the torchvision models,
which cannot be downloaded here; the real ImageNet weights for efficientnet_lite0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from convert.torch_weights import export_model, package_state_dict, torch_reference, torchvision_model
from models import MODELS, DreamModel, get_facts, load_model

#: Every zoo model, in the registry's order; of the Caffe GoogLeNets only bvlc_googlenet (the
#: Places ones are the same graph with another classifier).
BENCH_MODELS = tuple(name for name in MODELS if MODELS[name].caffe is None or name == "bvlc_googlenet")

#: torchvision's AlexNet ``features`` indices, in our layer names.
_ALEXNET_FEATURES = ("conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3",
                     "conv4", "relu4", "conv5", "relu5", "pool5")


#: Side of the random batch that sets the BatchNorm statistics of a random-init network.
CALIBRATION_SIZE = 128


class ModelUnavailable(RuntimeError):
    """A model whose port (or reference) is not importable; the benchmark skips it with this message."""


@dataclass
class ModelPair:
    name: str
    ours: DreamModel
    net: nn.Module                      # the torch network, eval mode
    weights_path: Path                  # our weights file (the memory benchmark's child loads it)
    source: str                         # where the weights came from
    layers: list[str] = field(default_factory=list)

    def torch_modules(self, layers: list[str]) -> dict[str, nn.Module]:
        """The torch module whose output is each of our layers (for forward hooks)."""
        return {layer: torch_layer(self.name, self.net, layer) for layer in layers}

    @property
    def step_scale(self) -> float:
        """Input units per ImageNet-normalised unit: how far ``lr`` steps, on both sides."""
        from deepdream.colour import PixelSpace

        return PixelSpace(self.ours).step_scale


def torch_layer(name: str, net: nn.Module, layer: str) -> nn.Module:
    """The torch module behind our layer ``layer`` of model ``name``."""
    if get_facts(name).caffe is not None:
        return net.blob_modules()[layer]        # Caffe blob names on both sides
    if hasattr(net, layer):
        return getattr(net, layer)              # same names as torchvision's attributes (GoogLeNet, Inception)
    if name == "resnet50":
        if layer.startswith("layer"):           # layer3_2 -> layer3[2]
            stage, block = layer.split("_")
            return getattr(net, stage)[int(block)]
        return getattr(net, layer)
    if name == "alexnet":
        return net.features[_ALEXNET_FEATURES.index(layer)]
    if name in ("vgg16", "vgg19"):
        from models.vgg import feature_keys

        conv_index = {ours: int(key.split(".")[1]) for key, ours in feature_keys(int(name[3:])).items()}
        kind, position = layer[:4], layer[4:]      # relu4_2 -> ("relu", "4_2")
        if kind == "pool":
            block = int(layer[4:])
            last_conv = max(i for conv, i in conv_index.items() if conv.startswith(f"conv{block}_"))
            return net.features[last_conv + 2]
        return net.features[conv_index["conv" + position] + (1 if kind == "relu" else 0)]
    if name == "efficientnet_lite0":
        if layer.startswith("block"):
            return net._blocks[int(layer[5:])]
        raise ValueError(f"the torch reference of {name} exposes blocks only, not '{layer}'")
    raise ValueError(f"no torch layer mapping for {name}")


@torch.no_grad()
def calibrate_batchnorm(net: nn.Module, seed: int = 0) -> None:
    """Give a random-init network's BatchNorms the statistics of a random batch.

    Fresh BatchNorms (mean 0, variance 1) let activations shrink or grow layer after layer:
    torchvision's random GoogLeNet reaches inception4c at ~1e-8, its gradients at ~1e-19, where
    timings would measure denormal arithmetic and the step comparison would compare zeros.
    With measured statistics every BN outputs unit scale, like a trained network.
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None            # cumulative average: after one batch, exactly its statistics
    generator = torch.Generator().manual_seed(seed)
    net.train()
    net(torch.randn(2, 3, CALIBRATION_SIZE, CALIBRATION_SIZE, generator=generator))
    net.eval()
    for norm in norms:
        norm.momentum = 0.1


def build_pair(name: str, workdir: Path, seed: int = 0) -> ModelPair:
    """Both sides of ``name`` with identical weights, exported into ``workdir``."""
    facts = get_facts(name)
    path = workdir / f"{name}_mlx.npz"
    if facts.caffe is not None:
        from convert.caffe import export_caffe
        from models.caffe_googlenet import VARIANTS
        from torchref.caffe_googlenet import CaffeGoogLeNetTorch

        # The same Caffe graph in torch, taking our RGB-ordered input; its weights reach our side
        # through the exporter's neural-dream path.
        net = CaffeGoogLeNetTorch(VARIANTS[name][0], rgb_input=True).randomise(seed)
        pth = workdir / f"{name}.pth"
        torch.save(net.neural_dream_state_dict(), pth)
        export_caffe(name, path, pth=pth)
        source = f"random He-initialised weights (torch seed {seed})"
    elif facts.torchvision:
        torch.manual_seed(seed)
        net = torchvision_model(name, pretrained=False)
        calibrate_batchnorm(net, seed)
        pth = workdir / f"{name}.pth"
        torch.save(net.state_dict(), pth)
        export_model(name, out=path, from_pth=pth)
        source = f"random init (torch seed {seed}), BatchNorm statistics of a random batch"
    else:
        try:
            net = torch_reference(name)
        except ImportError as exc:
            raise ModelUnavailable(f"{name}: the torch reference is not importable ({exc})") from None
        try:
            state_dict, source = package_state_dict(name)
        except RuntimeError as exc:     # the weights' package is missing: timing needs no real weights
            state_dict = torch_reference(name, seed).state_dict()
            source = f"random init of the torch reference (torch seed {seed}), since {exc}"
        net.load_state_dict(state_dict)
        pth = workdir / f"{name}.pth"
        torch.save(state_dict, pth)
        export_model(name, out=path, from_pth=pth)
    net.eval()
    ours = load_model(name, weights=path)
    return ModelPair(name=name, ours=ours, net=net, weights_path=path, source=source,
                     layers=ours.default_layers)

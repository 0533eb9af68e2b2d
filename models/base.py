"""The contract every zoo model fulfils, so that the dream engine and scripts stay model-agnostic."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn

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
        """Run the stages in order; return the requested ones (NHWC), stopping after the deepest."""
        wanted = set(outputs)
        all_names = [name for name, _ in self.stages()]
        missing = wanted.difference(all_names)
        if missing:
            self.check_layers(sorted(missing))
        result: dict[str, mx.array] = {}
        for name, stage in self.stages():
            x = stage(x)
            if name in wanted:
                result[name] = x
                if len(result) == len(wanted):
                    break
        return result

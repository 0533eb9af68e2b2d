"""What a dream maximises, computed from the model's named activations (NHWC).

An ``Objective`` names the layers it needs (so the forward pass stops at the deepest) and maps
``{layer: activation}`` to a scalar. Each layer contributes a *mean* over its elements and the
layers are averaged, so no layer dominates because of its size (pytorch-deepdream's loss).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from models import DreamModel

from .errors import DreamError


@dataclass
class Objective:
    """``mean over layers`` of either the mean squared activation (classic DeepDream) or, with
    guide features, the mean dot product with each position's best-matching guide vector.

    ``channels`` restricts every layer to those channel indices. ``guide`` maps each layer to
    its guide activations, shape (M, C) (C = the selected channels).
    """

    layers: list[str]
    channels: list[int] | None = None
    guide: dict[str, mx.array] = field(default_factory=dict)

    def select(self, activation: mx.array) -> mx.array:
        if self.channels is None:
            return activation
        return mx.take(activation, mx.array(self.channels), axis=-1)

    def layer_value(self, name: str, activation: mx.array) -> mx.array:
        act = self.select(activation)
        if name in self.guide:
            return guided_dot(act, self.guide[name])
        return mx.mean(act * act)

    def __call__(self, activations: Mapping[str, mx.array]) -> mx.array:
        values = [self.layer_value(name, activations[name]) for name in self.layers]
        return sum(values[1:], values[0]) / len(values)


def guided_dot(activation: mx.array, guide: mx.array) -> mx.array:
    """2015 notebook's ``objective_guide``: the gradient at each position is the guide vector whose
    dot product with that position's activation is largest.

    As a loss: the mean over positions of ``<a_p, stop_gradient(g_best(p))>``.
    """
    channels = activation.shape[-1]
    flat = activation.reshape(-1, channels)                 # (P, C)
    best = mx.argmax(flat @ guide.T, axis=1)                # (P,)
    target = mx.stop_gradient(mx.take(guide, best, axis=0))
    return mx.mean(mx.sum(flat * target, axis=1))


def layer_channels(model: DreamModel, layers: Sequence[str]) -> dict[str, int]:
    """Channel count of each layer, from one forward pass on a small blank image."""
    size = max(model.MIN_INPUT_SIZE, 64)
    outputs = model(mx.zeros((1, size, size, 3)), outputs=list(layers))
    return {name: int(outputs[name].shape[-1]) for name in layers}


def check_channels(model: DreamModel, layers: Sequence[str], channels: Sequence[int]) -> None:
    """Raise DreamError if a channel index does not exist in every requested layer."""
    counts = layer_channels(model, layers)
    for name in layers:
        bad = [c for c in channels if not 0 <= c < counts[name]]
        if bad:
            raise DreamError(
                f"channel {bad[0]} does not exist in layer '{name}' of {model.name}, which has "
                f"{counts[name]} channels; use --channels values from 0 to {counts[name] - 1}")


def guide_features(model: DreamModel, guide_rgb: np.ndarray, layers: Sequence[str],
                   channels: Sequence[int] | None = None) -> dict[str, mx.array]:
    """The guide image's activations at each layer, as (positions, channels) matrices."""
    x = model.preprocess(mx.array(guide_rgb[None]))
    outputs = model(x, outputs=list(layers))
    features = {}
    for name in layers:
        act = outputs[name]
        if channels is not None:
            act = mx.take(act, mx.array(list(channels)), axis=-1)
        features[name] = act.reshape(-1, act.shape[-1])
    mx.eval(features)
    return features


def build_objective(model: DreamModel, layers: Sequence[str], channels: Sequence[int] | None = None,
                    guide_rgb: np.ndarray | None = None) -> Objective:
    """Validate layers and channels against ``model`` and assemble the objective."""
    layers = list(dict.fromkeys(layers))  # duplicates would only re-weight a layer
    if not layers:
        raise DreamError(f"no layers to dream on; pick some from `--list-layers` for {model.name}")
    model.check_layers(layers)
    channel_list = None
    if channels is not None:
        channel_list = list(dict.fromkeys(int(c) for c in channels))
        check_channels(model, layers, channel_list)
    guide = guide_features(model, guide_rgb, layers, channel_list) if guide_rgb is not None else {}
    return Objective(layers=layers, channels=channel_list, guide=guide)

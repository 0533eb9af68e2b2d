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


def parse_channels(specs: Sequence[str]) -> list[int] | str:
    """``--channels`` values: indices and ranges (``0-63``), or ``all``."""
    if [s.lower() for s in specs] == ["all"]:
        return "all"
    channels: list[int] = []
    for spec in specs:
        first, sep, last = spec.partition("-")
        if not first.isdigit() or (sep and not last.isdigit()):
            raise DreamError(f"--channels takes indices, ranges like 0-63, or 'all' (got '{spec}')")
        low, high = int(first), int(last) if sep else int(first)
        if high < low:
            raise DreamError(f"--channels range '{spec}' is empty; write it low-high, e.g. 0-63")
        channels.extend(range(low, high + 1))
    return list(dict.fromkeys(channels))


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


# -- renders from noise (Lucid's objectives): one value per image of a batch -------------------------

TERM_KINDS = ("class", "channel", "neuron", "layer")


@dataclass(frozen=True)
class Term:
    """One summand of a render's objective, per image of the batch.

    ``class``: the pre-softmax logit of a class; ``channel``: a channel's mean activation;
    ``neuron``: a channel at the centre position; ``layer``: the mean squared activation
    (the dream's objective). ``targets`` holds, per image, the class or channel indices whose
    values are averaged (one row per image, so a sweep renders a different channel in each).
    """

    kind: str
    layer: str
    targets: np.ndarray | None = None   # (N, K) int32, or None for ``layer``
    weight: float = 1.0


def term_value(kind: str, activation: mx.array, targets: mx.array | None) -> mx.array:
    """(N,) values of one term; ``targets`` (N, K) picks the classes or channels."""
    if kind == "layer":
        return mx.mean(activation * activation, axis=tuple(range(1, activation.ndim)))
    if kind == "class":
        features = activation                                              # (N, classes)
    elif kind == "channel":
        features = mx.mean(activation, axis=(1, 2))                        # (N, C)
    else:
        features = activation[:, activation.shape[1] // 2, activation.shape[2] // 2]
    return mx.mean(mx.take_along_axis(features, targets, axis=1), axis=1)


def diversity(activation: mx.array) -> mx.array:
    """Lucid's diversity term: the mean over images of the summed cosine similarity of its Gram
    matrix with every other image's. Subtracting it pushes a batch apart in style, not position."""
    n, c = activation.shape[0], activation.shape[-1]
    flat = activation.reshape(n, -1, c)
    grams = (flat.transpose(0, 2, 1) @ flat).reshape(n, -1)
    grams = grams / mx.maximum(mx.linalg.norm(grams, axis=1, keepdims=True), 1e-10)
    similarity = grams @ grams.T
    return (mx.sum(similarity) - mx.sum(mx.diag(similarity))) / n


@dataclass
class RenderObjective:
    """The sum of ``terms`` (each weighted) minus ``diversity_weight`` times the diversity of
    ``diversity_layer``. Call with the activations and each term's targets (inputs of the
    compiled step, so a sweep's next batch reuses the compiled graph)."""

    terms: list[Term]
    diversity_weight: float = 0.0
    diversity_layer: str | None = None

    @property
    def layers(self) -> list[str]:
        names = [t.layer for t in self.terms]
        if self.diversity_weight:
            names.append(self.diversity_layer)
        return list(dict.fromkeys(names))

    def targets(self) -> list[mx.array]:
        return [mx.array(t.targets.astype(np.int32)) for t in self.terms if t.targets is not None]

    def __call__(self, activations: Mapping[str, mx.array], targets: Sequence[mx.array]) -> mx.array:
        """The scalar to maximise; summed over the batch so each image gets its own gradient."""
        remaining = iter(targets)
        total = mx.array(0.0)
        for term in self.terms:
            picked = None if term.kind == "layer" else next(remaining)
            total = total + term.weight * mx.sum(term_value(term.kind, activations[term.layer], picked))
        if self.diversity_weight:
            total = total - self.diversity_weight * diversity(activations[self.diversity_layer])
        return total

    def with_targets(self, index: int, rows: np.ndarray) -> RenderObjective:
        """A copy whose term ``index`` has new per-image ``rows`` (a sweep's next batch)."""
        terms = list(self.terms)
        terms[index] = Term(terms[index].kind, terms[index].layer, rows, terms[index].weight)
        return RenderObjective(terms, self.diversity_weight, self.diversity_layer)

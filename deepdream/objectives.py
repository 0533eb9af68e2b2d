"""What a dream or a render maximises: a weighted sum of terms, each read from one of the model's
named activations (NHWC).

A ``Term`` is a kind, the layer it reads, and its targets (the classes or channels it picks per
image, or the guide's features). ``KINDS`` maps each kind to the function that computes its value,
per image of the batch. Terms compose into an ``Objective`` with ``+``, ``-`` and ``*``, as in
Lucid/lucent's objectives::

    Term("channel", "block5", rows) - 100 * Term("diversity", "block5")

The targets are inputs of the compiled step (``Objective.targets()``, passed on each call), so
the next batch of a sweep, or another guide, reuses the compiled graph. The objective's ``key``
names its structure (kinds, layers, channel selections), which is what its memory use depends on.

A dream's objective (``build_objective``) averages a term per layer: the mean squared activation
(classic DeepDream) or, with a guide image, the 2015 notebook's guided dot product; each layer
contributes a *mean* over its elements, so no layer dominates because of its size
(pytorch-deepdream's loss). Renders from noise (``visualise.plan_render``) use the class,
channel and neuron terms, and Lucid's diversity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import mlx.core as mx
import numpy as np

from models import DreamModel

from .errors import DreamError

#: A term's value: (activation of its layer (N, ...), its targets or None) -> (N,) values, or one
#: value for the whole batch.
Value = Callable[[mx.array, "mx.array | None"], mx.array]


# -- the value of each kind of term ------------------------------------------------------------------

def layer_value(activation: mx.array, _: mx.array | None = None) -> mx.array:
    """The mean squared activation of each image (classic DeepDream)."""
    return mx.mean(activation * activation, axis=tuple(range(1, activation.ndim)))


def _picked(features: mx.array, targets: mx.array) -> mx.array:
    """The mean of each image's ``targets`` (N, K) among its ``features`` (N, C)."""
    return mx.mean(mx.take_along_axis(features, targets, axis=1), axis=1)


def class_value(logits: mx.array, targets: mx.array) -> mx.array:
    """The pre-softmax logit of each image's classes."""
    return _picked(logits, targets)


def channel_value(activation: mx.array, targets: mx.array) -> mx.array:
    """The mean activation of each image's channels."""
    return _picked(mx.mean(activation, axis=(1, 2)), targets)


def neuron_value(activation: mx.array, targets: mx.array) -> mx.array:
    """Each image's channels at the centre position."""
    return _picked(activation[:, activation.shape[1] // 2, activation.shape[2] // 2], targets)


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


def diversity(activation: mx.array, _: mx.array | None = None) -> mx.array:
    """Lucid's diversity term: the mean over images of the summed cosine similarity of its Gram
    matrix with every other image's. Subtracting it pushes a batch apart in style, not position."""
    n, c = activation.shape[0], activation.shape[-1]
    flat = activation.reshape(n, -1, c)
    grams = (flat.transpose(0, 2, 1) @ flat).reshape(n, -1)
    grams = grams / mx.maximum(mx.linalg.norm(grams, axis=1, keepdims=True), 1e-10)
    similarity = grams @ grams.T
    return (mx.sum(similarity) - mx.sum(mx.diag(similarity))) / n


@dataclass(frozen=True)
class Kind:
    """One kind of term: its value function, and whether its targets hold a row per image (a batch
    of the same objective repeats them) or one array the whole batch shares."""

    value: Value
    per_image: bool = True


#: Every kind of term. A new kind is its value function and its line here.
KINDS: dict[str, Kind] = {
    "layer": Kind(layer_value),
    "class": Kind(class_value),
    "channel": Kind(channel_value),
    "neuron": Kind(neuron_value),
    "guide": Kind(guided_dot, per_image=False),
    "diversity": Kind(diversity),
}


# -- terms and their sums ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Term:
    """One summand of an objective: ``weight`` times the summed per-image value of ``kind`` on ``layer``.

    ``targets`` are the kind's inputs: (N, K) int class or channel indices (a row per image, so a
    sweep renders a different channel in each), or the guide's features (M, C); None for kinds
    that need none. ``channels`` restricts the activation to those channel indices first (a
    dream's ``--channels``).
    """

    kind: str
    layer: str
    targets: np.ndarray | None = None
    weight: float = 1.0
    channels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown objective term '{self.kind}'; one of {', '.join(KINDS)}")

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.layer}" + ("[channels]" if self.channels is not None else "")

    def select(self, activation: mx.array) -> mx.array:
        if self.channels is None:
            return activation
        return mx.take(activation, mx.array(self.channels), axis=-1)

    def value(self, activation: mx.array, targets: mx.array | None) -> mx.array:
        """Per-image values (or one for the batch) on the layer's ``activation``."""
        return KINDS[self.kind].value(self.select(activation), targets)

    # Arithmetic: a term is a one-term objective.
    def __add__(self, other: Term | Objective) -> Objective:
        return Objective([self]) + other

    def __sub__(self, other: Term | Objective) -> Objective:
        return Objective([self]) - other

    def __neg__(self) -> Term:
        return self * -1.0

    def __mul__(self, factor: float) -> Term:
        return replace(self, weight=self.weight * factor)

    __rmul__ = __mul__

    def __truediv__(self, divisor: float) -> Term:
        return replace(self, weight=self.weight / divisor)


@dataclass(frozen=True)
class Objective:
    """The weighted sum of ``terms``: the scalar a step maximises, summed over the batch so that each
    image gets its own gradient. Call it with the activations and ``targets()`` (inputs of the
    compiled step)."""

    terms: tuple[Term, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "terms", tuple(self.terms))

    @property
    def layers(self) -> list[str]:
        """The layers the terms read, in order (the forward pass stops at the deepest)."""
        return list(dict.fromkeys(t.layer for t in self.terms))

    @property
    def key(self) -> str:
        """The objective's structure (not its targets or weights): what its memory use depends on."""
        return "+".join(t.key for t in self.terms)

    def targets(self) -> list[mx.array]:
        """The terms' targets, in order: the compiled step's inputs."""
        return [_as_input(t.targets) for t in self.terms if t.targets is not None]

    def __call__(self, activations: Mapping[str, mx.array], targets: Sequence[mx.array]) -> mx.array:
        remaining = iter(targets)
        total = mx.array(0.0)
        for term in self.terms:
            picked = None if term.targets is None else next(remaining)
            total = total + term.weight * mx.sum(term.value(activations[term.layer], picked))
        return total

    def with_targets(self, index: int, rows: np.ndarray) -> Objective:
        """A copy whose term ``index`` has new per-image ``rows`` (a sweep's next batch)."""
        terms = list(self.terms)
        terms[index] = replace(terms[index], targets=rows)
        return Objective(terms)

    def for_batch(self, n: int) -> Objective:
        """The objective with every per-image target row repeated for ``n`` images."""
        return Objective([t if t.targets is None or not KINDS[t.kind].per_image
                          else replace(t, targets=np.repeat(t.targets, n, axis=0)) for t in self.terms])

    @property
    def diversity_layer(self) -> str | None:
        """The layer its diversity term reads (None without one)."""
        return next((t.layer for t in self.terms if t.kind == "diversity"), None)

    def with_diversity(self, weight: float, layer: str | None) -> Objective:
        """The objective minus ``weight`` times the diversity of ``layer``, replacing any diversity term."""
        terms = [t for t in self.terms if t.kind != "diversity"]
        return Objective(terms) - weight * Term("diversity", layer) if weight else Objective(terms)

    # Arithmetic, as Lucid's: objectives add, subtract and scale.
    def __add__(self, other: Term | Objective) -> Objective:
        return Objective(self.terms + _terms(other))

    def __radd__(self, other: int) -> Objective:
        if other == 0:   # sum() of objectives starts from 0
            return self
        return NotImplemented

    def __sub__(self, other: Term | Objective) -> Objective:
        return self + -Objective(_terms(other))

    def __neg__(self) -> Objective:
        return self * -1.0

    def __mul__(self, factor: float) -> Objective:
        return Objective([t * factor for t in self.terms])

    __rmul__ = __mul__

    def __truediv__(self, divisor: float) -> Objective:
        return Objective([t / divisor for t in self.terms])


def _terms(other: Term | Objective) -> tuple[Term, ...]:
    if isinstance(other, Term):
        return (other,)
    if isinstance(other, Objective):
        return other.terms
    raise TypeError(f"an objective adds terms and objectives, not {type(other).__name__}")


def _as_input(targets: np.ndarray) -> mx.array:
    """Targets as the step's input: indices as int32, features as they are."""
    return mx.array(targets.astype(np.int32) if np.issubdtype(targets.dtype, np.integer) else targets)


# -- channels --------------------------------------------------------------------------------------

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


# -- a dream's objective ------------------------------------------------------------------------------

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
    """A dream's objective: the mean over ``layers`` of their squared activation, or with a guide
    image its guided dot product; layers and channels are checked against ``model``."""
    layers = list(dict.fromkeys(layers))  # duplicates would only re-weight a layer
    if not layers:
        raise DreamError(f"no layers to dream on; pick some from `--list-layers` for {model.name}")
    model.check_layers(layers)
    selected = None
    if channels is not None:
        selected = tuple(dict.fromkeys(int(c) for c in channels))
        check_channels(model, layers, selected)
    guide = guide_features(model, guide_rgb, layers, selected) if guide_rgb is not None else None
    terms = [Term("layer", name, channels=selected) if guide is None
             else Term("guide", name, np.array(guide[name]), channels=selected) for name in layers]
    return Objective(terms) / len(layers)

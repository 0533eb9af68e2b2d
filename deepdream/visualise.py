"""Feature visualisation: render what a class, channel or neuron responds to, from noise (Lucid/lucent's
``render_vis``).

A batch of images is parameterised (``param``: pixels or a 1/f-scaled spectrum, decorrelated
colour, sigmoid), transformed a little at random each step (``robustness``) and moved by Adam
to raise an ``objectives.Objective``. This is a different loop from the dream's (``dreamer.Dreamer``):
the dream edits a photo in pixel space with smoothed, normalised gradient steps and octaves;
a render optimises a parameterisation whose state is not an image (rolling or blurring a
spectrum means nothing), with transforms applied to the decoded image inside the gradient.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np
from tqdm import tqdm

from fastlayers.batchnorm import constant_weights
from models import DreamModel

from . import robustness
from .classes import class_index, class_list, class_names
from .colour import resolve_colour_matrix
from .errors import DreamError
from .objectives import Objective, Term, check_channels, layer_channels
from .param import PARAMS, make_param

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class RenderSettings:
    """Everything that shapes a render from noise (the defaults of ``--class``/``--neuron``/``--sweep``)."""

    param: str = "fft"
    height: int = 256
    width: int = 256
    steps: int = 128
    # Lucid's 0.05 over its 512 steps; over our 128 that leaves the render grey and faint, while twice
    # the step reaches a photo's contrast and colourfulness without clipping.
    lr: float = 0.1
    # Lucid's is 1; on efficientnet_lite0 1.5 turns its busy textures into recognisable objects
    # (goldfish with fins and eyes, round pizzas) that its torch twin reads back more surely.
    decay_power: float = 1.5
    robustness: robustness.Robustness = field(default_factory=robustness.Robustness)
    batch: int = 1
    diversity: float = 0.0
    decorrelate: str | None = "imagenet"
    seed: int | None = None
    save_every: int | None = None

    def validate(self) -> None:
        if self.param not in PARAMS:
            raise DreamError(f"unknown parameterisation '{self.param}'; use one of {', '.join(PARAMS)}")
        if self.steps < 1:
            raise DreamError(f"--steps must be at least 1 (got {self.steps})")
        if not self.lr > 0 or not np.isfinite(self.lr):
            raise DreamError(f"--lr must be positive (got {self.lr}); 0.1 is typical for renders")
        if not np.isfinite(self.decay_power) or self.decay_power < 0:
            raise DreamError(f"--decay-power must be zero or positive (got {self.decay_power}); 1 is Lucid's")
        if self.batch < 1:
            raise DreamError(f"--batch must be at least 1 (got {self.batch})")
        if self.diversity < 0 or not np.isfinite(self.diversity):
            raise DreamError(f"--diversity must be zero or positive (got {self.diversity})")
        if self.diversity and self.batch < 2:
            raise DreamError(f"--diversity {self.diversity:g} needs several images to tell apart; add --batch 4 (or more)")
        if self.save_every is not None and self.save_every < 1:
            raise DreamError(f"--save-every must be at least 1 (got {self.save_every})")
        self.robustness.validate()


class Renderer:
    """A model, an objective's structure and settings, compiled once; ``render(n, targets, rng)``
    runs the optimisation for a batch and returns (N, H, W, 3) float32 images in [0, 1]."""

    def __init__(self, model: DreamModel, objective: Objective, settings: RenderSettings) -> None:
        settings.validate()
        low = min(settings.height, settings.width)
        if low < model.MIN_INPUT_SIZE:
            raise DreamError(f"a {settings.width}x{settings.height} render is too small for {model.name}; "
                             f"use at least {model.MIN_INPUT_SIZE} px a side")
        self.model = model
        self.objective = objective
        self.settings = settings
        matrix = resolve_colour_matrix(model, settings.decorrelate) if settings.decorrelate else np.eye(3, dtype=np.float32)
        self.param = make_param(settings.param, settings.height, settings.width, matrix, settings.decay_power)
        pad = settings.robustness.pad
        self.grid = robustness.sampling_grid(settings.height + 2 * pad, settings.width + 2 * pad)
        self._step = mx.compile(self._adam_step)

    # Traced by mx.compile: MLX operations only.
    def _loss(self, state: mx.array, maps: mx.array, grid: mx.array, targets: list[mx.array]) -> mx.array:
        seen = robustness.transform(self.param.to_rgb(state), self.settings.robustness.pad, maps, grid)
        with constant_weights():
            activations = self.model(self.model.preprocess(seen), outputs=self.objective.layers)
        return self.objective(activations, targets)

    def _adam_step(self, state: mx.array, m: mx.array, v: mx.array, maps: mx.array, grid: mx.array,
                   targets: list[mx.array], lr: mx.array) -> tuple[mx.array, mx.array, mx.array, mx.array]:
        loss, grad = mx.value_and_grad(self._loss)(state, maps, grid, targets)
        b1, b2 = ADAM_BETAS
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        return state + lr * m / (mx.sqrt(v) + ADAM_EPS), m, v, loss

    def render(self, n: int, targets: Sequence[mx.array], rng: np.random.Generator | Sequence[np.random.Generator],
               *, snapshot: Callable[[np.ndarray], None] | None = None, progress: bool = True,
               description: str = "render", steps: int | None = None) -> np.ndarray:
        """Optimise ``n`` images for ``steps`` (default: the settings'); ``snapshot(images)`` is called
        every ``save_every`` steps. ``rng`` is one generator for the batch, or one per image: a sweep's
        items then draw exactly what ``--seed`` draws for a render of that item alone, whatever else
        shares their batch."""
        s = self.settings
        steps = steps or s.steps
        per_image = not isinstance(rng, np.random.Generator)
        if per_image and len(rng) != n:
            raise ValueError(f"{len(rng)} generators for {n} images")

        def draw_maps() -> np.ndarray:
            if per_image:
                return np.concatenate([s.robustness.sample(r, 1) for r in rng])
            return s.robustness.sample(rng, n)

        state = mx.concatenate([self.param.init(1, r) for r in rng]) if per_image else self.param.init(n, rng)
        m, v = mx.zeros_like(state), mx.zeros_like(state)
        targets = list(targets)
        b1, b2 = ADAM_BETAS
        with tqdm(total=steps, desc=description, unit="step", disable=not progress, file=sys.stderr,
                  dynamic_ncols=True) as bar:
            for t in range(1, steps + 1):
                maps = mx.array(draw_maps())
                lr = mx.array(s.lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t), dtype=mx.float32)  # Adam's bias correction
                state, m, v, loss = self._step(state, m, v, maps, self.grid, targets, lr)
                mx.eval(state, m, v, loss)
                bar.update(1)
                bar.set_postfix_str(f"objective {loss.item() / n:.3g}")
                if snapshot is not None and s.save_every and t % s.save_every == 0 and t < steps:
                    snapshot(self.images(state))
        return self.images(state)

    def images(self, state: mx.array) -> np.ndarray:
        return np.array(self.param.to_rgb(state), dtype=np.float32)


# -- objectives from the command line's words ----------------------------------------------------------

def parse_neuron(model: DreamModel, spec: str) -> tuple[str, int]:
    """``LAYER:CHANNEL`` -> (layer, channel), checked against the model."""
    layer, sep, channel = spec.rpartition(":")
    if not sep or not layer or not channel.isdigit():
        raise DreamError(f"--neuron takes LAYER:CHANNEL, e.g. block10:7 (got '{spec}')")
    model.check_layers([layer], allow_logits=False)
    count = layer_channels(model, [layer])[layer]
    if int(channel) >= count:
        raise DreamError(f"--neuron {spec}: layer '{layer}' of {model.name} has {count} channels (0-{count - 1})")
    return layer, int(channel)


@dataclass
class RenderPlan:
    """What to render: the objective (targets for one image) and, for a sweep, the items swept
    (``(label, target row)``) and which term they vary."""

    objective: Objective
    items: list[tuple[str, int]] = field(default_factory=list)
    sweep_term: int | None = None
    label: str = "render"   # a file-name stem for a single render


def _channel_list(model: DreamModel, layer: str, channels: list[int] | str) -> list[int]:
    if channels == "all":
        return list(range(layer_channels(model, [layer])[layer]))
    check_channels(model, [layer], channels)
    return list(channels)


def plan_render(model: DreamModel, *, class_spec: str | Sequence[str] | None = None, neuron: str | None = None,
                layers: Sequence[str] | None = None, channels: list[int] | str | None = None,
                sweep: bool = False, diversity: float = 0.0) -> RenderPlan:
    """Turn the objective flags into a ``RenderPlan``; every check happens here, before any work.

    ``class_spec``: one class, or ``--class``'s values: ``all``, several, or ranges (``0-7``), which
    a sweep renders one by one; a sweep renders one class one by one too unless it sweeps channels.
    """
    terms: list[Term] = []
    items: list[tuple[str, int]] = []
    labels: list[str] = []
    sweep_term = None
    one = np.zeros((1, 1), np.int32)
    if class_spec is not None:
        names = class_names(model)
        specs = [class_spec] if isinstance(class_spec, str) else list(class_spec)
        several = len(specs) > 1 or specs[0].strip().lower() == "all" or re.fullmatch(r"\s*\d+-\d+\s*", specs[0])
        if several and not sweep:
            what = "every class" if specs == ["all"] else "several classes"
            raise DreamError(f"--class {' '.join(specs)} renders {what}: add --sweep --output FOLDER")
        if sweep and (several or channels is None):
            items = [(names[i], i) for i in class_list(names, specs)]
            sweep_term = len(terms)
            terms.append(Term("class", "logits", one))
        else:
            index = class_index(names, specs[0])
            terms.append(Term("class", "logits", one + index))
            labels.append(names[index])
    if neuron is not None:
        layer, channel = parse_neuron(model, neuron)
        terms.append(Term("neuron", layer, one + channel))
        labels.append(f"{layer}_neuron{channel}")
    if layers:
        model.check_layers(layers, allow_logits=False)
        if sweep and channels is not None and class_spec is None and len(set(layers)) > 1:
            raise DreamError("a channel --sweep takes one layer; run one sweep per --layers value")
        for layer in dict.fromkeys(layers):
            labels.append(layer)
            if channels is None:
                terms.append(Term("layer", layer))
                continue
            chosen = _channel_list(model, layer, channels)
            if sweep and sweep_term is None:
                items = [(f"{layer}:{c}", c) for c in chosen]
                sweep_term = len(terms)
                terms.append(Term("channel", layer, one))
            else:
                terms.append(Term("channel", layer, np.array([chosen], np.int32)))
                labels.append("c" + "_".join(str(c) for c in chosen[:4]))
    elif channels is not None:
        raise DreamError("--channels needs --layers to say whose channels; e.g. --layers block10 --channels 0-63")
    if not terms:
        raise DreamError("nothing to render: give --class, --neuron or --layers (with --channels for channels)")
    if sweep and sweep_term is None:
        raise DreamError("--sweep needs something to sweep: --class all, or --layers LAYER --channels 0-63 (or all)")
    spatial = [t.layer for t in terms if t.kind != "class"]
    diversity_layer = spatial[0] if spatial else model.default_layers[-1]
    label = re.sub(r"[^A-Za-z0-9]+", "_", "_".join(labels)).strip("_") or "render"
    return RenderPlan(Objective(terms).with_diversity(diversity, diversity_layer), items, sweep_term, label)


def tile_targets(objective: Objective, n: int) -> Objective:
    """The objective with every term's single target row repeated for ``n`` images."""
    return objective.for_batch(n)


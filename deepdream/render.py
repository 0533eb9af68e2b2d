"""The dream itself: one gradient-ascent step (``make_step``) and the octave loop (``Dreamer``).

The step follows pytorch-deepdream (whose recipes the presets reproduce): the image lives in
the network's ImageNet-normalised input space; each step rolls it by a random jitter, takes
the gradient of the objective, blurs it with a cascade of three Gaussians whose width grows
over the octave, normalises it to zero mean / unit std, adds ``lr`` times it, rolls back and
clamps to valid pixels. Alternatives: the 2015 Caffe normalisation (``g / mean|g|``), the
Laplacian-pyramid normalisation of the 2015 TF notebook, TF-tutorial tiling for big images,
and steps in a decorrelated colour space.

Octaves follow the 2015 notebook: the image is shrunk ``octaves - 1`` times by ``scale``, the
smallest is dreamed first, and only the *detail* (dreamed minus base) is upscaled and added
to the next larger base, so the photo's own pixels are never blurred by resampling.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Protocol

import mlx.core as mx
import numpy as np
from tqdm import tqdm

from models import DreamModel
from models.base import IMAGENET_STD
from fastlayers.batchnorm import constant_weights

from . import colour, memory, transforms
from .errors import DreamError, make_notify
from .image_io import load_image
from .objectives import Objective, build_objective
from .progress import StepCounter
from .tiling import TiledStep

#: The guide image is analysed at most this large (longest side): its features are matched
#: per position, so a bigger guide only costs time.
GUIDE_MAX_SIZE = 512
GRAD_NORMS = ("std", "mean-abs")


@dataclass(frozen=True)
class DreamSettings:
    """Everything that shapes a dream, as plain values (what the command line resolves to).

    The field defaults are the generic settings (pytorch-deepdream's), used where neither a flag,
    a preset nor the model's recipe gives a value: the one home of the dream's defaults.

    ``layers=None`` means the model's default layers. ``decorrelate`` is ``"imagenet"``,
    ``"model"`` (the matrix in the weights file's metadata) or the path of a 3x3 ``.npy``.
    ``tile_size=None`` tiles when the memory budget asks for it (``max_memory`` bytes, None: the
    machine's default, ``memory.default_budget``), ``0`` never, a size always.
    """

    layers: tuple[str, ...] | None = None
    channels: tuple[int, ...] | None = None
    guide: str | None = None
    octaves: int = 4
    scale: float = 1.8
    steps: int = 10
    lr: float = 0.09
    jitter: int = 32
    smoothing: float = 0.5
    smooth: bool = True
    lap_norm: bool = False
    grad_norm: str = "std"
    tile_size: int | None = None
    max_memory: int | None = None
    seed: int | None = None
    decorrelate: str | None = None

    def validate(self) -> None:
        """Raise DreamError for values no dream can use."""
        if self.octaves < 1:
            raise DreamError(f"--octaves must be at least 1 (got {self.octaves})")
        if self.steps < 1:
            raise DreamError(f"--steps must be at least 1 (got {self.steps})")
        if not self.scale > 0 or not np.isfinite(self.scale):
            raise DreamError(f"--scale must be a positive number (got {self.scale}); 1.3-2 is typical")
        if self.octaves > 1 and self.scale <= 1.0:
            raise DreamError(f"--scale must be above 1 when --octaves is more than 1 (got {self.scale}); "
                             "1.3-2 is typical")
        if not self.lr >= 0 or not np.isfinite(self.lr):
            raise DreamError(f"--lr must be zero or positive (got {self.lr})")
        if self.jitter < 0:
            raise DreamError(f"--jitter must be zero or positive (got {self.jitter})")
        if not self.smoothing >= 0 or not np.isfinite(self.smoothing):
            raise DreamError(f"--smoothing must be zero or positive (got {self.smoothing})")
        if self.grad_norm not in GRAD_NORMS:
            raise DreamError(f"unknown gradient normalisation '{self.grad_norm}'; use one of {', '.join(GRAD_NORMS)}")
        if self.tile_size is not None and self.tile_size < 0:
            raise DreamError(f"--tile-size must be positive, or 0 for whole-image steps (got {self.tile_size})")
        if self.max_memory is not None and self.max_memory <= 0:
            raise DreamError(f"--max-memory must be positive (got {self.max_memory} bytes); e.g. --max-memory 6GB")
        if self.channels is not None and any(c < 0 for c in self.channels):
            raise DreamError("--channels takes channel indices from 0 up; see the layer's channel count")

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# -- where the optimisation happens ------------------------------------------------------------

class Space(Protocol):
    """How the optimised array ("state") maps to pixels and to the network input."""

    step_scale: float

    def encode(self, rgb: np.ndarray) -> mx.array: ...
    def decode(self, state: mx.array) -> np.ndarray: ...
    def to_input(self, state: mx.array) -> mx.array: ...
    def clamp(self, state: mx.array) -> mx.array: ...


class PixelSpace:
    """Steps on the network input itself (ImageNet-normalised pixels), as pytorch-deepdream does,
    so ``lr`` means the same as in its recipes. For a network with other input units (Caffe's
    0-255) the step is scaled so that ``lr`` moves pixels as far as it does in ImageNet-normalised
    units: the same flags, the same strength, whatever the model."""

    def __init__(self, model: DreamModel) -> None:
        self.step_scale = float(np.mean(IMAGENET_STD) / np.mean(model.std))
        self.mean = mx.array(model.mean, dtype=mx.float32)
        self.std = mx.array(model.std, dtype=mx.float32)
        self.low = -self.mean / self.std          # rgb 0 and 1 in normalised units
        self.high = (1.0 - self.mean) / self.std

    def encode(self, rgb: np.ndarray) -> mx.array:
        return (mx.array(rgb[None]) - self.mean) / self.std

    def decode(self, state: mx.array) -> np.ndarray:
        return np.array(state * self.std + self.mean)[0]

    def to_input(self, state: mx.array) -> mx.array:
        return state

    def clamp(self, state: mx.array) -> mx.array:
        return mx.minimum(mx.maximum(state, self.low), self.high)


class DecorrelatedSpace:
    """Steps on a latent ``z`` with ``rgb = z @ M_n.T`` (M_n: the normalised colour matrix, ``colour.normalise``).

    The gradient w.r.t. ``z`` is the pixel gradient times ``M_n``: it is preconditioned by the
    colour covariance, so steps follow the colour directions natural images have (mostly
    brightness) instead of pushing every pixel toward one saturated hue.
    """

    def __init__(self, model: DreamModel, matrix: np.ndarray) -> None:
        m_n = colour.normalise(colour.validate(matrix))
        self.forward = mx.array(m_n.T)
        self.inverse = mx.array(np.linalg.inv(m_n.T.astype(np.float64)).astype(np.float32))
        self.model = model
        # A unit step in z moves rgb about as much as a unit step in normalised pixels
        # (lr * std) once scaled by the mean std, so the recipes' lr values carry over.
        self.step_scale = float(np.mean(IMAGENET_STD))

    def encode(self, rgb: np.ndarray) -> mx.array:
        return mx.array(rgb[None]) @ self.inverse

    def decode(self, state: mx.array) -> np.ndarray:
        return np.array(state @ self.forward)[0]

    def to_input(self, state: mx.array) -> mx.array:
        return self.model.preprocess(state @ self.forward)

    def clamp(self, state: mx.array) -> mx.array:
        return mx.clip(state @ self.forward, 0.0, 1.0) @ self.inverse


def resolve_colour_matrix(model: DreamModel, spec: str) -> np.ndarray:
    """``"imagenet"``, ``"model"`` (the weights file's ``colour_matrix``) or a ``.npy`` path -> 3x3 matrix."""
    if spec.lower() == "model":
        matrix = model.metadata.get("colour_matrix")
        if matrix is None:
            raise DreamError(f"--decorrelate model: the {model.name} weights file has no colour_matrix in its "
                             "metadata; use --decorrelate imagenet or a .npy made by calc_cm.py")
        return colour.validate(np.asarray(matrix, dtype=np.float32), "the weights file's colour_matrix")
    if spec.lower() != "imagenet" and not os.path.isfile(spec):
        raise DreamError(f"colour matrix '{spec}' not found; use 'imagenet', 'model' or a .npy made by calc_cm.py")
    return colour.load_colour_matrix(spec)


def make_space(model: DreamModel, decorrelate: str | None = None) -> Space:
    if decorrelate is None:
        return PixelSpace(model)
    return DecorrelatedSpace(model, resolve_colour_matrix(model, decorrelate))


# -- one step --------------------------------------------------------------------------------------

class DreamStep:
    """One gradient-ascent step on the whole image, compiled with ``mx.compile``.

    ``state = step.encode(rgb)``, then ``new_state, loss = step(state, shift, sigma, lr)``:
    ``shift`` (dy, dx) is the jitter roll, ``sigma`` the smoothing width for this step, ``lr``
    the step size; ``step.decode(state)`` is the RGB image. (``tiling.TiledStep`` does the same
    step on images too big for one gradient, with the same interface.)
    Two compiled graphs: the objective's gradient of the rolled image, and the update (unroll,
    smooth or Laplacian-normalise, normalise, step, clamp). Everything that changes between
    calls (roll offsets, sigma, lr, 1/size) is an input, so nothing size- or step-specific is
    baked into the generated kernels: a new image size only re-traces, it does not re-run the
    CPU backend's C++ compiler.
    """

    def __init__(self, model: DreamModel, objective: Objective, space: Space | None = None, *,
                 grad_norm: str = "std", lap_norm: bool = False, smooth: bool = True) -> None:
        if grad_norm not in GRAD_NORMS:
            raise DreamError(f"unknown gradient normalisation '{grad_norm}'; use one of {', '.join(GRAD_NORMS)}")
        self.model = model
        self.objective = objective
        self.space = space if space is not None else PixelSpace(model)
        self.grad_norm = grad_norm
        self.lap_norm = lap_norm
        self.smooth = smooth
        self._gradient = mx.compile(mx.value_and_grad(self._loss))
        self._rolled_gradient = mx.compile(self._rolled_value_and_grad)
        self._rolled_update = mx.compile(self._rolled_update_step)
        self._update = mx.compile(self._update_step)

    # The four functions below are traced by mx.compile: MLX operations only, no host syncs.
    def _loss(self, state: mx.array) -> mx.array:
        # The step differentiates only the image: BatchNorms fold into their convolutions once.
        with constant_weights():
            activations = self.model(self.space.to_input(state), outputs=self.objective.layers)
        return self.objective(activations)

    def _rolled_value_and_grad(self, state: mx.array, start: mx.array) -> tuple[mx.array, mx.array]:
        return mx.value_and_grad(self._loss)(transforms.roll(state, start))

    def _rolled_update_step(self, state: mx.array, rolled_grad: mx.array, back: mx.array, sigma: mx.array,
                            lr: mx.array, inv_count: mx.array, lap_counts: list[mx.array]) -> mx.array:
        return self._update_step(state, transforms.roll(rolled_grad, back), sigma, lr, inv_count, lap_counts)

    def _update_step(self, state: mx.array, grad: mx.array, sigma: mx.array, lr: mx.array, inv_count: mx.array,
                     lap_counts: list[mx.array]) -> mx.array:
        if self.lap_norm:
            grad = transforms.lap_normalize(grad, inv_counts=lap_counts)
        elif self.smooth:
            grad = transforms.cascade_smooth(grad, sigma)
        if self.grad_norm == "mean-abs":
            grad = transforms.normalize_mean_abs(grad, inv_count)
        else:
            grad = transforms.normalize_std(grad, inv_count)
        return self.space.clamp(state + (lr * self.space.step_scale) * grad)

    def encode(self, rgb: np.ndarray) -> mx.array:
        return self.space.encode(rgb)

    def decode(self, state: mx.array) -> np.ndarray:
        return self.space.decode(state)

    def _update_inputs(self, shape: tuple[int, ...], sigma: float, lr: float) -> tuple:
        """The update's per-call inputs (sigma, lr, 1/size, the Laplacian bands' 1/sizes) as arrays."""
        _, height, width, channels = shape
        lap_counts = transforms.lap_inverse_counts(height, width, channels) if self.lap_norm else []
        return (mx.array(sigma, dtype=mx.float32), mx.array(lr, dtype=mx.float32),
                mx.array(1.0 / (height * width * channels)), lap_counts)

    def update(self, state: mx.array, grad: mx.array, sigma: float, lr: float) -> mx.array:
        """The update alone, from the whole image's (unrolled) gradient, evaluated."""
        new = self._update(state, grad, *self._update_inputs(state.shape, sigma, lr))
        mx.eval(new)
        return new

    def __call__(self, state: mx.array, shift: tuple[int, int], sigma: float,
                 lr: float) -> tuple[mx.array, float]:
        start, back = transforms.roll_starts(state.shape[1], state.shape[2], shift)
        loss_arr, grad = self._rolled_gradient(state, start)
        new = self._rolled_update(state, grad, back, *self._update_inputs(state.shape, sigma, lr))
        mx.eval(new, loss_arr)
        return new, loss_arr.item()


def make_step(model: DreamModel, objective: Objective, space: Space | None = None, *,
              grad_norm: str = "std", lap_norm: bool = False, smooth: bool = True) -> DreamStep:
    """The compiled dream step; time ``step(state, shift, sigma, lr)`` to benchmark one step."""
    return DreamStep(model, objective, space, grad_norm=grad_norm, lap_norm=lap_norm, smooth=smooth)


# -- the octave loop ------------------------------------------------------------------------------

class Dreamer:
    """A model + settings, ready to dream any number of images (video frames reuse the compiled step).

    ``Dreamer(model, settings)(rgb)`` -> dreamed rgb, both float32 (H, W, 3) in [0, 1].
    Construction validates everything (layers, channels, guide, colour matrix, tile size), so
    errors surface before any work is done. Each octave is dreamed whole when it fits the memory
    budget, else in tiles (``memory.plan_octave``); a dream that cannot fit fails before its first step.
    """

    def __init__(self, model: DreamModel, settings: DreamSettings, *, quiet: bool = False,
                 notify: Callable[[str], None] | None = None) -> None:
        settings.validate()
        self.model = model
        self.settings = settings
        self.quiet = quiet
        self._notify = notify or make_notify(quiet)
        self._noticed: set[str] = set()
        min_size = model.MIN_INPUT_SIZE
        if settings.tile_size and settings.tile_size < 2 * min_size:
            # Tiles are split evenly, so some can be just over half the tile size.
            raise DreamError(f"--tile-size {settings.tile_size} is too small for {model.name}; "
                             f"use at least {2 * min_size} (512 is a good choice)")
        layers = list(settings.layers) if settings.layers else model.default_layers
        guide_rgb = None
        if settings.guide is not None:
            guide_rgb = load_image(settings.guide, max_size=GUIDE_MAX_SIZE, what="guide image")
            if min(guide_rgb.shape[:2]) < min_size:
                raise DreamError(f"guide image '{settings.guide}' is {guide_rgb.shape[1]}x{guide_rgb.shape[0]}; "
                                 f"{model.name} needs at least {min_size} px on each side")
        self.layers = tuple(layers)
        self.objective = build_objective(model, layers, settings.channels, guide_rgb)
        self.space = make_space(model, settings.decorrelate)
        self.step = make_step(model, self.objective, self.space, grad_norm=settings.grad_norm,
                              lap_norm=settings.lap_norm, smooth=settings.smooth)
        self.budget = settings.max_memory or memory.default_budget()
        self.probe = memory.make_probe()
        self._profile: memory.Profile | None = None
        self._plans: dict[tuple[int, int, bool], memory.Plan] = {}
        self._tiled: dict[int, TiledStep] = {}

    def notice(self, message: str) -> None:
        """Tell the user once (video frames would otherwise repeat it every frame)."""
        if message not in self._noticed:
            self._noticed.add(message)
            self._notify(message)

    def octave_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Octave sizes, smallest first, with fewer octaves if the smallest would be below the model's minimum."""
        s = self.settings
        min_size = self.model.MIN_INPUT_SIZE
        if min(height, width) < min_size:
            raise DreamError(f"the image is {width}x{height} but {self.model.name} needs at least {min_size} px "
                             "on each side; use a larger image (or a larger --max-size)")
        count = transforms.max_octaves(height, width, s.scale, min_size, s.octaves)
        if count < s.octaves:
            self.notice(f"{s.octaves} octaves at scale {s.scale:g} would shrink {width}x{height} below "
                        f"{self.model.name}'s minimum of {min_size} px; using {count}")
        return transforms.octave_sizes(height, width, count, s.scale)

    # -- memory ------------------------------------------------------------------------------------

    def profile(self) -> memory.Profile:
        """The step's memory per pixel: from the cache, else measured now (once per model and layer set)."""
        if self._profile is None:
            s = self.settings
            key = memory.profile_key(self.model.name, len(self.model.class_names or ()) or "", ",".join(self.layers),
                                     f"channels={s.channels is not None}", f"guide={s.guide is not None}",
                                     f"space={type(self.space).__name__}", f"lap={s.lap_norm}", f"smooth={s.smooth}",
                                     self.probe.name)
            self._profile = memory.load_profile(key)
            if self._profile is None:
                self.notice(f"measuring {self.model.name}'s memory per pixel for these layers (once; it is cached)")
                # The Laplacian normalisation updates the whole image at once, tiled or not: measure that too.
                update = self._profile_update if s.lap_norm else None
                self._profile = memory.measure_profile(self._profile_run, self._profile_tile, self.probe, update)
                memory.save_profile(key, self._profile)
        return self._profile

    # The profile's runs: each makes its own side x side state, so its arrays are part of the peak measured.
    def _profile_state(self, side: int) -> mx.array:
        return self.step.encode(np.random.default_rng(0).random((side, side, 3), dtype=np.float32))

    def _profile_run(self, side: int) -> None:
        self.step(self._profile_state(side), (0, 0), 1.0, 0.0)

    def _profile_tile(self, side: int) -> None:
        mx.eval(*self.step._gradient(self._profile_state(side)))

    def _profile_update(self, side: int) -> None:
        state = self._profile_state(side)
        gradient = np.random.default_rng(1).standard_normal(state.shape, dtype=np.float32)
        self.step.update(state, mx.array(gradient), 1.0, 0.0)

    def plan(self, height: int, width: int, last: bool = True) -> memory.Plan:
        """How the octave of this size is dreamed (``last``: the full-size one, whose base the caller holds)."""
        key = (height, width, last)
        if key in self._plans:
            return self._plans[key]
        s = self.settings
        if s.tile_size is not None:   # an explicit --tile-size (0: never) wins over the budget
            tile = s.tile_size if s.tile_size and max(height, width) > s.tile_size else None
            plan = memory.Plan(height, width, tile, float("nan"), float("nan"))
        else:
            self.probe.release()
            resident = self.probe.resident()
            if memory.fits_unprofiled(resident, height, width, self.budget):
                plan = memory.Plan(height, width, None, float("nan"), float("nan"))
            else:
                # Image-sized arrays the loop holds besides the step's own (see __call__): the octave's
                # base unless it is the caller's image; tiled, also the state and its gradient.
                extra = 0 if last else 1
                profile = self.profile()
                plan = memory.plan_octave(profile, resident, height, width, self.budget,
                                          min_tile=2 * self.model.MIN_INPUT_SIZE, whole_copies=extra,
                                          tiled_copies=2 + extra, tiled_extra=profile.update_bytes_per_pixel,
                                          what=self.model.name)
        self._plans[key] = plan
        return plan

    def _tiling_notice(self, tiled: list[memory.Plan]) -> str:
        """One line for a dream's tiling: its largest tiled octave, and how many smaller ones are tiled too."""
        plan = tiled[-1]
        tile_h, tile_w = plan.tile_shape
        more = f"; {len(tiled) - 1} smaller octave(s) too" if len(tiled) > 1 else ""
        return (f"{plan.width}x{plan.height} would need about {memory.format_bytes(plan.whole)} in one piece, over the "
                f"{memory.format_bytes(self.budget)} memory budget: dreaming it in {plan.tile_count} tiles of "
                f"{tile_w}x{tile_h} (about {memory.format_bytes(plan.predicted)}{more}; --max-memory or --tile-size "
                "to change)")

    def runner(self, plan: memory.Plan) -> DreamStep | TiledStep:
        if plan.tile is None:
            return self.step
        if plan.tile not in self._tiled:
            self._tiled[plan.tile] = TiledStep(self.step, plan.tile)
        return self._tiled[plan.tile]

    # -- the octave loop -----------------------------------------------------------------------------

    def __call__(self, image: np.ndarray, *, rng: np.random.Generator | None = None,
                 progress: bool | None = None, description: str | None = None,
                 snapshot: Callable[[np.ndarray], None] | None = None, save_every: int | None = None) -> np.ndarray:
        """Dream ``image`` (float32 (H, W, 3) in [0, 1]); ``rng`` drives the jitter (seeded from settings if None).

        ``snapshot(rgb)`` receives the image so far, at full size, every ``save_every`` steps and at
        the end of each octave but the last (whose result is the return value).
        """
        s = self.settings
        if image.ndim != 3 or image.shape[2] != 3:
            raise DreamError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
        rng = rng if rng is not None else np.random.default_rng(s.seed)
        base = np.asarray(image, dtype=np.float32)
        sizes = self.octave_sizes(base.shape[0], base.shape[1])
        # Every octave's plan first, the full size's first of all: a dream that cannot fit the
        # budget fails before any step, naming the size that does not fit.
        plans = [self.plan(h, w, last=index == len(sizes) - 1) for index, (h, w) in reversed(list(enumerate(sizes)))]
        plans.reverse()
        auto_tiled = [p for p in plans if p.tile is not None and not np.isnan(p.predicted)]
        if auto_tiled:
            self.notice(self._tiling_notice(auto_tiled))
        show = (not self.quiet) if progress is None else progress
        detail: np.ndarray | None = None
        with tqdm(total=len(sizes) * s.steps, desc=description or self.model.name, unit="step",
                  disable=not show, file=sys.stderr, dynamic_ncols=True) as bar:
            counter = StepCounter(bar)
            for index, ((h, w), plan) in enumerate(zip(sizes, plans)):
                # Few image-sized arrays at a time (the memory plan counts them): the start is built
                # in place, and a tiled octave's state is that same array.
                octave_base = base if (h, w) == base.shape[:2] else transforms.resize(base, h, w)
                if detail is None:
                    start = octave_base.copy()
                else:
                    start = transforms.resize(detail, h, w)
                    detail = None
                    start += octave_base
                np.clip(start, 0.0, 1.0, out=start)
                runner = self.runner(plan)
                state = runner.encode(start)
                del start
                bar.set_postfix_str(f"octave {index + 1}/{len(sizes)} {w}x{h}"
                                    + (f", {plan.tile_count} tiles" if plan.tile else ""))
                for i in range(s.steps):
                    shift = rng.integers(-s.jitter, s.jitter + 1, size=2) if s.jitter else np.zeros(2, np.int64)
                    if plan.tile:
                        # Move the tile seams anywhere (TF tutorial), or small jitters would leave them in place.
                        shift = shift + rng.integers(0, plan.tile, size=2)
                    sigma = transforms.smoothing_sigma(i, s.steps, s.smoothing)
                    with counter.step():        # the first one compiles: its time is not in the ETA
                        state, _ = runner(state, (int(shift[0]), int(shift[1])), sigma, s.lr)
                    if snapshot is not None and save_every and (i + 1) % save_every == 0 and i + 1 < s.steps:
                        snapshot(self._full_size(runner.decode(_copy(state)), octave_base, base))
                result = runner.decode(state)
                del state
                if index + 1 < len(sizes):
                    if snapshot is not None:
                        snapshot(self._full_size(result, octave_base, base))
                    detail = result
                    detail -= octave_base
                    del result
        return np.clip(result, 0.0, 1.0, out=result)

    @staticmethod
    def _full_size(result: np.ndarray, octave_base: np.ndarray, base: np.ndarray) -> np.ndarray:
        """An octave's image at the final size: its detail upscaled onto the original, as the next octave starts."""
        h, w = base.shape[:2]
        return np.clip(base + transforms.resize(result - octave_base, h, w), 0.0, 1.0).astype(np.float32)


def _copy(state: mx.array | np.ndarray) -> mx.array | np.ndarray:
    """A snapshot's own copy of the state (a tiled state is decoded in place)."""
    return state.copy() if isinstance(state, np.ndarray) else state


def dream(model: DreamModel, image: np.ndarray, settings: DreamSettings | None = None, *,
          quiet: bool = True, rng: np.random.Generator | None = None) -> np.ndarray:
    """One-call API: dream ``image`` (float32 RGB (H, W, 3) in [0, 1]) with ``settings``."""
    return Dreamer(model, settings or DreamSettings(), quiet=quiet)(image, rng=rng)


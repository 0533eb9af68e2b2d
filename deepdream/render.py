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

from . import colour, transforms
from .errors import DreamError, make_notify
from .image_io import load_image
from .objectives import Objective, build_objective

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
        if self.tile_size is not None and self.tile_size < 1:
            raise DreamError(f"--tile-size must be positive (got {self.tile_size})")
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
    """One gradient-ascent step, compiled with ``mx.compile``.

    Call as ``new_state, loss = step(state, shift, sigma, lr)``: ``shift`` (dy, dx) is the
    jitter roll, ``sigma`` the smoothing width for this step, ``lr`` the step size.
    Two compiled graphs: the objective's gradient (of the whole rolled image, or of one tile
    at a time when ``tile_size`` is set and the image is larger: memory bounded by the tile),
    and the update (unroll, smooth or Laplacian-normalise, normalise, step, clamp; tiled images
    are rolled and unrolled eagerly, outside the graphs, to keep their peak memory low).
    Everything that changes between calls (roll offsets, sigma, lr, 1/size) is an input, so
    nothing size- or step-specific is baked into the generated kernels: a new image size
    only re-traces, it does not re-run the CPU backend's C++ compiler.
    """

    def __init__(self, model: DreamModel, objective: Objective, space: Space | None = None, *,
                 grad_norm: str = "std", lap_norm: bool = False, smooth: bool = True,
                 tile_size: int | None = None) -> None:
        if grad_norm not in GRAD_NORMS:
            raise DreamError(f"unknown gradient normalisation '{grad_norm}'; use one of {', '.join(GRAD_NORMS)}")
        self.model = model
        self.objective = objective
        self.space = space if space is not None else PixelSpace(model)
        self.grad_norm = grad_norm
        self.lap_norm = lap_norm
        self.smooth = smooth
        self.tile_size = tile_size
        self._gradient = mx.compile(mx.value_and_grad(self._loss))
        self._rolled_gradient = mx.compile(self._rolled_value_and_grad)
        self._rolled_update = mx.compile(self._rolled_update_step)
        self._update = mx.compile(self._update_step)

    # The three functions below are traced by mx.compile: MLX operations only, no host syncs.
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

    def tiled(self, height: int, width: int) -> bool:
        return self.tile_size is not None and (height > self.tile_size or width > self.tile_size)

    def tiled_gradient(self, state: mx.array, shift: tuple[int, int]) -> tuple[mx.array, float]:
        """TF tutorial's tiled gradient of the rolled image: one tile at a time, each evaluated
        before the next, so peak memory is one tile's activations plus image-sized arrays.

        Each tile's loss is weighted by its share of the image, so the sum approximates the
        gradient of the whole image's mean objective.
        """
        # Eager mx.roll (two slices): the compiled roll's doubled image would add to the peak
        # memory that tiling exists to bound.
        rolled = mx.roll(state, shift, axis=(1, 2))
        mx.eval(rolled)
        _, height, width, _ = state.shape
        total = height * width
        grad_rows, loss = [], 0.0
        for y0, y1 in transforms.tile_bounds(height, self.tile_size):
            row = []
            for x0, x1 in transforms.tile_bounds(width, self.tile_size):
                tile_loss, grad = self._gradient(rolled[:, y0:y1, x0:x1])
                weight = (y1 - y0) * (x1 - x0) / total
                grad = grad * weight
                mx.eval(grad, tile_loss)
                loss += weight * tile_loss.item()
                row.append(grad)
            grad_rows.append(mx.concatenate(row, axis=2) if len(row) > 1 else row[0])
        grad = mx.concatenate(grad_rows, axis=1) if len(grad_rows) > 1 else grad_rows[0]
        return grad, loss

    def __call__(self, state: mx.array, shift: tuple[int, int], sigma: float,
                 lr: float) -> tuple[mx.array, float]:
        _, height, width, channels = state.shape
        lap_counts = transforms.lap_inverse_counts(height, width, channels) if self.lap_norm else []
        sigma_, lr_ = mx.array(sigma, dtype=mx.float32), mx.array(lr, dtype=mx.float32)
        inv_count = mx.array(1.0 / (height * width * channels))
        if self.tiled(height, width):
            # Big images: unroll eagerly too (see tiled_gradient), keeping the update's peak low.
            grad, loss = self.tiled_gradient(state, shift)
            grad = mx.roll(grad, (-shift[0], -shift[1]), axis=(1, 2))
            new = self._update(state, grad, sigma_, lr_, inv_count, lap_counts)
            mx.eval(new)
            return new, loss
        start, back = transforms.roll_starts(height, width, shift)
        loss_arr, grad = self._rolled_gradient(state, start)
        new = self._rolled_update(state, grad, back, sigma_, lr_, inv_count, lap_counts)
        mx.eval(new, loss_arr)
        return new, loss_arr.item()


def make_step(model: DreamModel, objective: Objective, space: Space | None = None, *,
              grad_norm: str = "std", lap_norm: bool = False, smooth: bool = True,
              tile_size: int | None = None) -> DreamStep:
    """The compiled dream step; time ``step(state, shift, sigma, lr)`` to benchmark one step."""
    return DreamStep(model, objective, space, grad_norm=grad_norm, lap_norm=lap_norm, smooth=smooth,
                     tile_size=tile_size)


# -- the octave loop ------------------------------------------------------------------------------

class Dreamer:
    """A model + settings, ready to dream any number of images (video frames reuse the compiled step).

    ``Dreamer(model, settings)(rgb)`` -> dreamed rgb, both float32 (H, W, 3) in [0, 1].
    Construction validates everything (layers, channels, guide, colour matrix, tile size), so
    errors surface before any work is done.
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
        if settings.tile_size is not None and settings.tile_size < 2 * min_size:
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
        self.objective = build_objective(model, layers, settings.channels, guide_rgb)
        self.space = make_space(model, settings.decorrelate)
        self.step = make_step(model, self.objective, self.space, grad_norm=settings.grad_norm,
                              lap_norm=settings.lap_norm, smooth=settings.smooth, tile_size=settings.tile_size)

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
        show = (not self.quiet) if progress is None else progress
        detail = np.zeros(sizes[0] + (3,), np.float32)
        result = base
        with tqdm(total=len(sizes) * s.steps, desc=description or self.model.name, unit="step",
                  disable=not show, file=sys.stderr, dynamic_ncols=True) as bar:
            for index, (h, w) in enumerate(sizes):
                octave_base = transforms.resize(base, h, w)
                start = np.clip(octave_base + transforms.resize(detail, h, w), 0.0, 1.0)
                state = self.space.encode(start)
                bar.set_postfix_str(f"octave {index + 1}/{len(sizes)} {w}x{h}")
                tiled = self.step.tiled(h, w)
                for i in range(s.steps):
                    shift = rng.integers(-s.jitter, s.jitter + 1, size=2) if s.jitter else np.zeros(2, np.int64)
                    if tiled:
                        # Move the tile seams anywhere (TF tutorial), or small jitters would leave them in place.
                        shift = shift + rng.integers(0, self.step.tile_size, size=2)
                    sigma = transforms.smoothing_sigma(i, s.steps, s.smoothing)
                    state, _ = self.step(state, (int(shift[0]), int(shift[1])), sigma, s.lr)
                    bar.update(1)
                    if snapshot is not None and save_every and (i + 1) % save_every == 0 and i + 1 < s.steps:
                        snapshot(self._full_size(self.space.decode(state), octave_base, base))
                result = self.space.decode(state)
                detail = result - octave_base
                if snapshot is not None and index + 1 < len(sizes):
                    snapshot(self._full_size(result, octave_base, base))
        return np.clip(result, 0.0, 1.0).astype(np.float32)


    @staticmethod
    def _full_size(result: np.ndarray, octave_base: np.ndarray, base: np.ndarray) -> np.ndarray:
        """An octave's image at the final size: its detail upscaled onto the original, as the next octave starts."""
        h, w = base.shape[:2]
        return np.clip(base + transforms.resize(result - octave_base, h, w), 0.0, 1.0).astype(np.float32)


def dream(model: DreamModel, image: np.ndarray, settings: DreamSettings | None = None, *,
          quiet: bool = True, rng: np.random.Generator | None = None) -> np.ndarray:
    """One-call API: dream ``image`` (float32 RGB (H, W, 3) in [0, 1]) with ``settings``."""
    return Dreamer(model, settings or DreamSettings(), quiet=quiet)(image, rng=rng)


"""One gradient-ascent step of a dream on the whole image (``DreamStep``, ``make_step``).

The step follows pytorch-deepdream (whose recipes the presets reproduce): the image lives in
the network's ImageNet-normalised input space; each step rolls it by a random jitter, takes
the gradient of the objective, blurs it with a cascade of three Gaussians whose width grows
over the octave, normalises it to zero mean / unit std, adds ``lr`` times it, rolls back and
clamps to valid pixels. Alternatives: the 2015 Caffe normalisation (``g / mean|g|``), the
Laplacian-pyramid normalisation of the 2015 TF notebook, and steps in a decorrelated colour
space. ``tiling.TiledStep`` takes the same step a tile at a time (TF-tutorial tiling for big images).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from fastlayers.batchnorm import constant_weights
from models import DreamModel

from . import transforms
from .colour import PixelSpace, Space
from .errors import DreamError
from .objectives import Objective
from .settings import GRAD_NORMS


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
        self.targets = objective.targets()   # inputs of the compiled gradient, not constants in it
        self._value_and_grad = mx.compile(mx.value_and_grad(self._loss))
        self._rolled_gradient = mx.compile(self._rolled_value_and_grad)
        self._rolled_update = mx.compile(self._rolled_update_step)
        self._update = mx.compile(self._update_step)

    # The four functions below are traced by mx.compile: MLX operations only, no host syncs.
    def _loss(self, state: mx.array, targets: list[mx.array]) -> mx.array:
        # The step differentiates only the image: BatchNorms fold into their convolutions once.
        with constant_weights():
            activations = self.model(self.space.to_input(state), outputs=self.objective.layers)
        return self.objective(activations, targets)

    def _rolled_value_and_grad(self, state: mx.array, start: mx.array,
                               targets: list[mx.array]) -> tuple[mx.array, mx.array]:
        return mx.value_and_grad(self._loss)(transforms.roll(state, start), targets)

    def _rolled_update_step(self, state: mx.array, rolled_grad: mx.array, back: mx.array, sigma: mx.array,
                            lr: mx.array, inv_count: mx.array, lap_counts: list[mx.array]) -> mx.array:
        return self._update_step(state, transforms.roll(rolled_grad, back), sigma, lr, inv_count, lap_counts)

    def _update_step(self, state: mx.array, grad: mx.array, sigma: mx.array, lr: mx.array, inv_count: mx.array,
                     lap_counts: list[mx.array]) -> mx.array:
        if self.lap_norm:
            grad = transforms.lap_normalize(grad, inv_counts=lap_counts)
        elif self.smooth:
            grad = transforms.cascade_smooth(grad, sigma)
        return transforms.normalized_step(state, grad, lr * self.space.step_scale, inv_count, self.grad_norm,
                                          self.space.clamp, self.space.bounds)

    def gradient(self, state: mx.array) -> tuple[mx.array, mx.array]:
        """(objective, its gradient) of ``state`` as it is (no roll): a tile's share of a tiled step."""
        return self._value_and_grad(state, self.targets)

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
        loss_arr, grad = self._rolled_gradient(state, start, self.targets)
        new = self._rolled_update(state, grad, back, *self._update_inputs(state.shape, sigma, lr))
        mx.eval(new, loss_arr)
        return new, loss_arr.item()


def make_step(model: DreamModel, objective: Objective, space: Space | None = None, *,
              grad_norm: str = "std", lap_norm: bool = False, smooth: bool = True) -> DreamStep:
    """The compiled dream step; time ``step(state, shift, sigma, lr)`` to benchmark one step."""
    return DreamStep(model, objective, space, grad_norm=grad_norm, lap_norm=lap_norm, smooth=smooth)

"""Dream steps on images too big for one gradient: everything done a tile at a time.

The TF tutorial computes the gradient tile by tile. Here the rest of the step is too, so that
only two image-sized arrays live through a step (the state and its gradient, both numpy,
written in place):

1. gradient: each tile of the jittered (rolled) image goes through the network on its own and
   its gradient is written back where its pixels came from;
2. statistics: each tile's smoothed gradient, read with a margin of its neighbours' gradient
   (the smoothing kernel's reach, reflected at the image edges as the whole-image blur pads),
   adds to the global sums the normalisation needs;
3. update: each tile is smoothed again, normalised with the global statistics, stepped and clamped.

Smoothing twice costs far less than the network and saves a third image-sized array. Because the
margins hold the real neighbours, the result equals the whole-image step's: no seam can appear.
The Laplacian normalisation needs the whole pyramid, so with ``--lap-norm`` the update runs on the
whole gradient (the memory plan counts it).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from . import transforms
from .step import DreamStep


class TiledStep:
    """``DreamStep``'s step on numpy state ((H, W, C), updated in place), ``tile_size`` pixels at a time.

    The same interface as ``DreamStep``'s: ``encode(rgb)``, ``__call__(state, shift, sigma, lr)``, ``decode(state)``.
    """

    def __init__(self, step: DreamStep, tile_size: int) -> None:
        self.step = step
        self.space = step.space
        self.tile_size = tile_size
        self.halo = transforms.SMOOTHING_KERNEL_SIZE // 2 if step.smooth and not step.lap_norm else 0
        self._stats = mx.compile(self._block_stats)
        self._update = mx.compile(self._block_update)
        self._grad: np.ndarray | None = None

    def _smooth(self, padded: mx.array, sigma: mx.array) -> mx.array:
        return transforms.cascade_smooth_padded(padded, sigma) if self.halo else padded

    def _block_stats(self, padded: mx.array, sigma: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        g = self._smooth(padded, sigma)
        return mx.sum(g), mx.sum(g * g), mx.sum(mx.abs(g))

    def _block_update(self, state: mx.array, padded: mx.array, sigma: mx.array, centre: mx.array,
                      gain: mx.array) -> mx.array:
        return self.space.clamp(state + gain * (self._smooth(padded, sigma) - centre))

    def blocks(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        return [(y0, y1, x0, x1) for y0, y1 in transforms.tile_bounds(height, self.tile_size)
                for x0, x1 in transforms.tile_bounds(width, self.tile_size)]

    def encode(self, rgb: np.ndarray) -> np.ndarray:
        """The state of ``rgb`` (float32 (H, W, 3), overwritten: the loop hands over its own array)."""
        for y0, y1, x0, x1 in self.blocks(*rgb.shape[:2]):
            rgb[y0:y1, x0:x1] = np.array(self.space.encode(rgb[y0:y1, x0:x1]))[0]
        return rgb

    def decode(self, state: np.ndarray) -> np.ndarray:
        """RGB of ``state``, in place."""
        for y0, y1, x0, x1 in self.blocks(*state.shape[:2]):
            state[y0:y1, x0:x1] = self.space.decode(mx.array(state[None, y0:y1, x0:x1]))
        return state

    def gradient(self, state: np.ndarray, shift: tuple[int, int]) -> tuple[np.ndarray, float]:
        """The gradient of the rolled image's mean objective, tile by tile, unrolled into place.

        Each tile's loss is weighted by its share of the image, so the sum approximates the
        whole image's mean objective (the whole-image step's loss).
        """
        height, width, _ = state.shape
        if self._grad is None or self._grad.shape != state.shape:
            self._grad = None  # free the old octave's before the new one is allocated
            self._grad = np.empty_like(state)
        grad = self._grad
        # Pixel i of the rolled image is pixel (i - shift) of the state (mx.roll's convention).
        row0, col0 = (-shift[0]) % height, (-shift[1]) % width
        loss = 0.0
        for y0, y1, x0, x1 in self.blocks(height, width):
            index = np.ix_((np.arange(y0, y1) + row0) % height, (np.arange(x0, x1) + col0) % width)
            tile_loss, tile_grad = self.step.gradient(mx.array(state[index][None]))
            weight = (y1 - y0) * (x1 - x0) / (height * width)
            grad[index] = np.array(tile_grad[0] * weight)
            loss += weight * tile_loss.item()
        return grad, loss

    def _padded(self, grad: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> mx.array:
        if not self.halo:
            return mx.array(grad[None, y0:y1, x0:x1])
        height, width, _ = grad.shape
        rows = transforms.reflect_indices(y0 - self.halo, y1 + self.halo, height)
        cols = transforms.reflect_indices(x0 - self.halo, x1 + self.halo, width)
        return mx.array(grad[np.ix_(rows, cols)][None])

    def __call__(self, state: np.ndarray, shift: tuple[int, int], sigma: float, lr: float) -> tuple[np.ndarray, float]:
        height, width, channels = state.shape
        grad, loss = self.gradient(state, shift)
        if self.step.lap_norm:
            self._whole_update(state, grad, sigma, lr)
            return state, loss
        sigma_ = mx.array(sigma, dtype=mx.float32)
        blocks = self.blocks(height, width)
        sums = np.zeros(3, np.float64)
        for y0, y1, x0, x1 in blocks:
            sums += [float(s.item()) for s in self._stats(self._padded(grad, y0, y1, x0, x1), sigma_)]
        count = height * width * channels
        if self.step.grad_norm == "mean-abs":
            centre, scale = 0.0, 1.0 / (sums[2] / count + transforms.NORMALIZE_EPS)
        else:
            centre = sums[0] / count
            scale = 1.0 / (np.sqrt(max(sums[1] / count - centre * centre, 0.0)) + transforms.NORMALIZE_EPS)
        gain = mx.array(lr * self.space.step_scale * scale, dtype=mx.float32)
        centre_ = mx.array(centre, dtype=mx.float32)
        for y0, y1, x0, x1 in blocks:
            new = self._update(mx.array(state[None, y0:y1, x0:x1]), self._padded(grad, y0, y1, x0, x1),
                               sigma_, centre_, gain)
            state[y0:y1, x0:x1] = np.array(new[0])
        return state, loss

    def _whole_update(self, state: np.ndarray, grad: np.ndarray, sigma: float, lr: float) -> None:
        state[...] = np.array(self.step.update(mx.array(state[None]), mx.array(grad[None]), sigma, lr)[0])

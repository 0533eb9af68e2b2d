"""Image parameterisations for renders from noise (Lucid's ``pixel_image`` and ``fft_image``, lucid/optvis/param).

A parameterisation owns the array the optimiser moves (the *state*, a batch of N images) and
maps it to RGB in [0, 1] with MLX operations only, so the map sits inside the compiled step
and the gradient flows back through it. Both share the last two stages: the decorrelated
colour map of ``deepdream.colour`` (``rgb_linear = latent @ M_n.T``) and a sigmoid, which
bounds the image without clipping (a clipped pixel has no gradient and stays stuck).

``fft`` keeps the real FFT coefficients of each colour plane instead of the pixels and
scales frequency f by ``1 / max(|f|, 1/max(h, w)) ** decay_power`` (with the total weight of
power 1, ``spectrum_scale``): a unit step moves low frequencies much more than high ones, so
gradient ascent (which otherwise favours the high-frequency patterns classifiers are most
sensitive to) builds large, coherent shapes.
"""

from __future__ import annotations

from typing import Protocol

import mlx.core as mx
import numpy as np

from . import colour

PARAMS = ("pixel", "fft")
#: Standard deviation of the initial state, as Lucid uses: the first image is a near-uniform grey.
INIT_STD = 0.01
#: Lucid divides the inverse FFT by 4 so a unit-variance spectrum lands in the sigmoid's linear part.
FFT_OUTPUT_SCALE = 0.25


class Param(Protocol):
    """``init(n, rng)`` -> the starting state; ``to_rgb(state)`` -> (N, H, W, 3) in [0, 1] (traceable)."""

    height: int
    width: int

    def init(self, n: int, rng: np.random.Generator) -> mx.array: ...
    def to_rgb(self, state: mx.array) -> mx.array: ...


class _ColourMap:
    """Decorrelated colour + sigmoid, the last stage of both parameterisations."""

    def __init__(self, matrix: np.ndarray | None) -> None:
        m = colour.IMAGENET_SQRT_COV if matrix is None else colour.validate(matrix)
        self.forward = mx.array(colour.normalise(m).T)

    def __call__(self, latent: mx.array) -> mx.array:
        return mx.sigmoid(latent @ self.forward)


class PixelParam:
    """The latent pixels themselves (Lucid's ``pixel_image`` with decorrelated colour)."""

    def __init__(self, height: int, width: int, matrix: np.ndarray | None = None) -> None:
        self.height, self.width = height, width
        self.colour = _ColourMap(matrix)

    def init(self, n: int, rng: np.random.Generator) -> mx.array:
        return mx.array(rng.normal(0.0, INIT_STD, (n, self.height, self.width, 3)).astype(np.float32))

    def to_rgb(self, state: mx.array) -> mx.array:
        return self.colour(state)


def rfft2_frequencies(height: int, width: int) -> np.ndarray:
    """|f| (cycles per pixel) of each coefficient of a real 2-D FFT, shape (height, width // 2 + 1)."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    return np.sqrt(fx * fx + fy * fy)


def spectrum_scale(height: int, width: int, decay_power: float) -> np.ndarray:
    """Lucid's 1/f weighting of each coefficient, times sqrt(h*w) so the image's variance does not shrink
    with size, then rescaled so its energy is that of Lucid's power 1 at this size.

    Adam moves every coefficient by about the learning rate per step whatever its gradient, so the
    weighting's energy is the step's size in the image. Left alone, ``1/|f|^P`` with P above 1 multiplies
    that energy (the lowest frequencies' weights explode, the more so the larger the image): the
    latent image outgrows the sigmoid's linear part within a few dozen steps and the render comes out
    clipped and neon. With the energy pinned, the decay power only moves it between frequencies.
    """
    freqs = rfft2_frequencies(height, width)
    floor = np.maximum(freqs, 1.0 / max(height, width))
    scale = 1.0 / floor ** decay_power
    counts = half_spectrum_counts(height, width)
    scale *= _rms(1.0 / floor, counts) / _rms(scale, counts)
    return (scale * np.sqrt(height * width)).astype(np.float32)


def half_spectrum_counts(height: int, width: int) -> np.ndarray:
    """How many coefficients of the full spectrum each one of the real FFT's half stands for: two for
    every column but the DC one (and, for an even width, the Nyquist one)."""
    counts = np.ones((height, width // 2 + 1))
    counts[:, 1:(width + 1) // 2] = 2.0
    return counts


def _rms(weights: np.ndarray, counts: np.ndarray) -> float:
    return float(np.sqrt((counts * weights ** 2).sum() / counts.sum()))


class FFTParam:
    """Real-FFT coefficients per colour plane (Lucid's ``fft_image``), state (N, 3, 2, H, W//2+1):
    the real and imaginary parts, so the optimiser moves plain float32 arrays."""

    def __init__(self, height: int, width: int, matrix: np.ndarray | None = None, decay_power: float = 1.0) -> None:
        self.height, self.width = height, width
        self.colour = _ColourMap(matrix)
        self.scale = mx.array(spectrum_scale(height, width, decay_power))

    def init(self, n: int, rng: np.random.Generator) -> mx.array:
        shape = (n, 3, 2, self.height, self.width // 2 + 1)
        return mx.array(rng.normal(0.0, INIT_STD, shape).astype(np.float32))

    def to_rgb(self, state: mx.array) -> mx.array:
        spectrum = (state[:, :, 0] + 1j * state[:, :, 1]) * self.scale      # (N, 3, H, W//2+1) complex
        planes = mx.fft.irfft2(spectrum, s=(self.height, self.width))      # (N, 3, H, W)
        return self.colour(planes.transpose(0, 2, 3, 1) * FFT_OUTPUT_SCALE)


def make_param(kind: str, height: int, width: int, matrix: np.ndarray | None = None,
               decay_power: float = 1.0) -> Param:
    if kind == "fft":
        return FFTParam(height, width, matrix, decay_power)
    return PixelParam(height, width, matrix)


def high_frequency_share(rgb: np.ndarray, cutoff: float = 0.25) -> float:
    """Share of an image's spectral power (mean removed, channels summed) above ``cutoff`` cycles
    per pixel (0.25: a quarter of the sampling rate, half way to Nyquist)."""
    rgb = np.asarray(rgb, np.float64)
    rgb = rgb - rgb.mean(axis=(0, 1))
    power = (np.abs(np.fft.rfft2(rgb, axes=(0, 1))) ** 2).sum(axis=-1)
    power *= half_spectrum_counts(rgb.shape[0], rgb.shape[1])
    freqs = rfft2_frequencies(rgb.shape[0], rgb.shape[1])
    return float(power[freqs > cutoff].sum() / max(power.sum(), 1e-30))

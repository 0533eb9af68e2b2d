"""Colour decorrelation: the square root of the data's RGB covariance (Lucid's colour space),
and the spaces a dream steps in (``make_space``: pixels, or that decorrelated space).

Dreaming in the decorrelated space means the optimiser moves a latent ``z`` with
``rgb = z @ M_n.T``; gradients w.r.t. ``z`` are then preconditioned by the covariance, so
steps follow the colour directions natural images actually have instead of drifting hue.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Protocol

import mlx.core as mx
import numpy as np

from models import DreamModel
from models.base import IMAGENET_STD

from .errors import DreamError

#: sqrt of ImageNet's RGB covariance (pixels in [0, 1]), as used by Lucid.
IMAGENET_SQRT_COV = np.array(
    [[0.26, 0.09, 0.02],
     [0.27, 0.00, -0.05],
     [0.27, -0.09, 0.03]], dtype=np.float32)


class ColourMatrixError(DreamError):
    """A colour matrix that cannot be loaded or used; the message says what to do."""


def pixel_covariance(rgb: np.ndarray) -> np.ndarray:
    """3x3 covariance of one image's pixels ((H, W, 3) in [0, 1]), each channel centred."""
    pixels = rgb.reshape(-1, 3).astype(np.float64)
    pixels -= pixels.mean(axis=0)
    return pixels.T @ pixels / max(len(pixels) - 1, 1)


def sqrt_covariance(cov: np.ndarray) -> np.ndarray:
    """``M = U diag(sqrt(S + 1e-10))`` from ``cov = U S V^T``, so ``M @ M.T == cov``."""
    u, s, _ = np.linalg.svd(np.asarray(cov, np.float64))
    # SVD leaves each column's sign arbitrary (M @ M.T is the same either way); make each
    # column sum non-negative so the first column reads as luminance, as in Lucid's matrix.
    u = u * np.where(u.sum(axis=0) < 0, -1.0, 1.0)
    return (u * np.sqrt(s + 1e-10)).astype(np.float32)


def colour_matrix(images: Iterable[np.ndarray]) -> np.ndarray:
    """The decorrelation matrix of a set of images: the SVD square root of their mean covariance."""
    total, count = np.zeros((3, 3)), 0
    for rgb in images:
        total += pixel_covariance(rgb)
        count += 1
    if count == 0:
        raise ColourMatrixError("no images to compute a colour matrix from")
    return sqrt_covariance(total / count)


def normalise(matrix: np.ndarray) -> np.ndarray:
    """Scale so the largest column has unit L2 norm (about /0.462 for ImageNet), as Lucid does."""
    return (matrix / np.linalg.norm(matrix, axis=0).max()).astype(np.float32)


def load_colour_matrix(spec: str | os.PathLike) -> np.ndarray:
    """``"imagenet"`` or the path of a 3x3 ``.npy`` written by calc_cm.py -> the raw (unnormalised) matrix."""
    if str(spec).lower() == "imagenet":
        return IMAGENET_SQRT_COV.copy()
    if os.path.isfile(spec) and os.path.getsize(spec) == 0:
        raise ColourMatrixError(f"colour matrix '{spec}' is an empty file (0 bytes); use 'imagenet' or a .npy made "
                                "by calc_cm.py")
    try:
        matrix = np.load(spec, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ColourMatrixError(
            f"cannot read colour matrix '{spec}' ({exc}); use 'imagenet' or a .npy made by calc_cm.py") from None
    return validate(matrix, str(spec))


def validate(matrix: np.ndarray, origin: str = "colour matrix") -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.shape != (3, 3) or not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-12:
        raise ColourMatrixError(
            f"{origin} must be a finite, invertible 3x3 matrix (got shape {matrix.shape}); make one with calc_cm.py")
    return matrix


# -- where a dream's optimisation happens: pixels, or the decorrelated colour space ----------------

class Space(Protocol):
    """How the optimised array ("state") maps to pixels and to the network input."""

    step_scale: float
    #: (low, high) per channel when ``clamp`` clips each channel to them, else None.
    bounds: tuple[mx.array, mx.array] | None

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
        self.bounds = (self.low, self.high)

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
        m_n = normalise(validate(matrix))
        self.forward = mx.array(m_n.T)
        self.inverse = mx.array(np.linalg.inv(m_n.T.astype(np.float64)).astype(np.float32))
        self.model = model
        # A unit step in z moves rgb about as much as a unit step in normalised pixels
        # (lr * std) once scaled by the mean std, so the recipes' lr values carry over.
        self.step_scale = float(np.mean(IMAGENET_STD))
        self.bounds = None                        # its clamp goes through rgb

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
        return validate(np.asarray(matrix, dtype=np.float32), "the weights file's colour_matrix")
    if spec.lower() != "imagenet" and not os.path.isfile(spec):
        raise DreamError(f"colour matrix '{spec}' not found; use 'imagenet', 'model' or a .npy made by calc_cm.py")
    return load_colour_matrix(spec)


def make_space(model: DreamModel, decorrelate: str | None = None) -> Space:
    if decorrelate is None:
        return PixelSpace(model)
    return DecorrelatedSpace(model, resolve_colour_matrix(model, decorrelate))

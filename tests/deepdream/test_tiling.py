"""Tiled steps (efficientnet_lite0, real weights): the same step as the whole image's, and no seams."""

from __future__ import annotations

import numpy as np
import pytest

from deepdream import transforms
from deepdream.image_io import load_image
from deepdream.objectives import build_objective
from deepdream.colour import make_space
from deepdream.dreamer import Dreamer
from deepdream.settings import DreamSettings
from deepdream.step import make_step
from deepdream.tiling import TiledStep
from tests.deepdream.test_dreamer import CHELSEA


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return load_image(CHELSEA, max_size=160)


STEP_VARIANTS = [dict(), dict(grad_norm="mean-abs"), dict(smooth=False), dict(lap_norm=True)]


def whole_step(step, photo, shift, sigma=1.3, lr=0.1):
    state, loss = step(step.encode(photo), shift, sigma, lr)
    return step.decode(state), loss


@pytest.mark.parametrize("decorrelate", [None, "imagenet"])
@pytest.mark.parametrize("variant", STEP_VARIANTS, ids=["std", "mean-abs", "no-smoothing", "lap-norm"])
def test_one_tile_is_the_whole_image_step(effnet, photo, variant, decorrelate):
    step = make_step(effnet, build_objective(effnet, ["block8"]), make_space(effnet, decorrelate), **variant)
    expected, expected_loss = whole_step(step, photo, (5, -9))
    tiled = TiledStep(step, 4096)
    state, loss = tiled(tiled.encode(photo.copy()), (5, -9), 1.3, 0.1)
    np.testing.assert_allclose(tiled.decode(state), expected, atol=5e-6)
    assert loss == pytest.approx(expected_loss, rel=1e-5)


@pytest.mark.parametrize("decorrelate", [None, "imagenet"])
@pytest.mark.parametrize("variant", STEP_VARIANTS, ids=["std", "mean-abs", "no-smoothing", "lap-norm"])
def test_tile_by_tile_update_equals_the_whole_image_update(effnet, photo, variant, decorrelate):
    """Given the whole image's gradient, small tiles (smoothed with their neighbours' margins,
    normalised with global statistics) update every pixel as the whole-image step does: no seam."""
    step = make_step(effnet, build_objective(effnet, ["block8"]), make_space(effnet, decorrelate), **variant)
    expected, _ = whole_step(step, photo, (5, -9))
    one_tile = TiledStep(step, 4096)
    whole_gradient, _ = one_tile.gradient(one_tile.encode(photo.copy()), (5, -9))
    small = TiledStep(step, 48)
    assert len(small.blocks(*photo.shape[:2])) > 4
    small.gradient = lambda state, shift: (whole_gradient.copy(), 0.0)
    state, _ = small(small.encode(photo.copy()), (5, -9), 1.3, 0.1)
    np.testing.assert_allclose(small.decode(state), expected, atol=2e-4)


def test_tiled_gradient_weights_each_tile_by_its_area(effnet, photo):
    step = make_step(effnet, build_objective(effnet, ["block8"]))
    _, whole_loss = whole_step(step, photo, (5, -9))
    tiled = TiledStep(step, 64)
    grad, split_loss = tiled.gradient(tiled.encode(photo.copy()), (5, -9))
    # the losses are area-weighted, so the total stays on the whole-image mean's scale
    assert 0.5 * whole_loss < split_loss < 2 * whole_loss
    assert grad.shape == photo.shape and np.abs(grad).max() > 0


def edge_strength(detail: np.ndarray, tile: int) -> float:
    """The dream's strength (mean |detail|) within 2 px of the tile grid's fixed edges, relative to
    its median over the image (1: no seam), the weaker of rows and columns."""
    ratios = []
    for axis in (0, 1):
        strength = np.abs(detail).mean(axis=(1 - axis, 2))
        edges = [start for start, _ in transforms.tile_bounds(detail.shape[axis], tile)[1:]]
        ratios.append(np.mean([strength[e - 2:e + 2].mean() for e in edges]) / np.median(strength))
    return min(ratios)


def test_tiled_dream_shows_no_seams(effnet):
    """A tile fed through the network alone dreams less near its border (the network sees padding
    there); the random roll moves the borders every step, so the finished dream shows no band.
    Without the roll this reads about 0.83; with it, 0.94-0.98."""
    photo = load_image(CHELSEA, max_size=256)
    tile = 64
    settings = DreamSettings(layers=("block8",), octaves=1, steps=20, lr=0.15, jitter=0, tile_size=tile, seed=3)
    result = Dreamer(effnet, settings, quiet=True)(photo)
    assert result.shape == photo.shape
    assert edge_strength(result - photo, tile) > 0.9

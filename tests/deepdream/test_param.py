"""Image parameterisations: the fft decode and its 1/f scaling, the bounded colour map, the high-frequency
measure; and on efficientnet_lite0's real weights, an fft render with less high-frequency power than a pixel one."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

import models
from deepdream.param import FFTParam, PixelParam, high_frequency_share, spectrum_scale
from deepdream.visualise import Renderer, RenderSettings, plan_render, tile_targets

@pytest.fixture(scope="module")
def effnet(weights_dir):
    from convert import make_default_weights  # the scripts' first-run conversion

    make_default_weights("efficientnet_lite0")
    return models.load_model("efficientnet_lite0")


def test_fft_param_decodes_one_coefficient_to_one_frequency():
    """A state with a single non-zero coefficient decodes to a sinusoid of exactly that frequency."""
    param = FFTParam(32, 32, matrix=np.eye(3, dtype=np.float32))
    state = np.zeros((1, 3, 2, 32, 17), np.float32)
    state[0, 0, 0, 0, 4] = 1.0                       # red plane: 4 cycles across, real part
    rgb = np.array(param.to_rgb(mx.array(state)))[0]
    logit = np.log(rgb[..., 0] / (1 - rgb[..., 0]))  # undo the sigmoid
    spectrum = np.abs(np.fft.rfft2(logit))
    assert np.unravel_index(np.argmax(spectrum), spectrum.shape) == (0, 4)
    assert np.allclose(rgb[..., 1], 0.5, atol=1e-6) and np.allclose(rgb[..., 2], 0.5, atol=1e-6)
    # 1/f weighting: the lowest frequency is scaled ~max(h, w) times more than the highest.
    scale = spectrum_scale(32, 32, 1.0)
    assert scale[0, 1] / scale[16, 16] == pytest.approx(math.sqrt(2) * 16, rel=1e-3)


def test_decay_power_moves_energy_between_frequencies_without_adding_any():
    """Power 1 is Lucid's scale (``1/max(|f|, 1/max(h, w)) * sqrt(h*w)``); other powers decode a white
    spectrum to an image of the same variance (else the render outgrows the sigmoid: clipped, neon),
    with more of it at the low frequencies."""
    h, w = 48, 64
    freqs = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2)
    lucid = 1.0 / np.maximum(freqs, 1.0 / w) * math.sqrt(h * w)
    np.testing.assert_allclose(spectrum_scale(h, w, 1.0), lucid, rtol=1e-6)
    rng = np.random.default_rng(0)
    state = mx.array(rng.normal(0.0, 1.0, (64, 3, 2, h, w // 2 + 1)).astype(np.float32))
    spreads, lows = {}, {}
    for power in (0.5, 1.0, 1.5, 2.0):
        param = FFTParam(h, w, matrix=np.eye(3, dtype=np.float32), decay_power=power)
        spectrum = (state[:, :, 0] + 1j * state[:, :, 1]) * param.scale
        planes = np.array(mx.fft.irfft2(spectrum, s=(h, w)))
        spreads[power] = planes.std()
        lows[power] = high_frequency_share(planes.reshape(-1, h, w).transpose(1, 2, 0)[..., :3], cutoff=1 / 16)
    # Equal in expectation (a few low-frequency coefficients carry much of it, hence the margin); unpinned,
    # power 2 alone would be several times power 1.
    assert max(spreads.values()) / min(spreads.values()) < 1.15, spreads
    assert lows[0.5] > lows[1.0] > lows[1.5] > lows[2.0], lows


def test_params_start_grey_and_stay_in_range():
    rng = np.random.default_rng(0)
    for param in (PixelParam(40, 48), FFTParam(40, 48)):
        rgb = np.array(param.to_rgb(param.init(2, rng)))
        assert rgb.shape == (2, 40, 48, 3)
        assert np.all((rgb > 0) & (rgb < 1)) and abs(rgb.mean() - 0.5) < 0.05


def test_high_frequency_share():
    y, x = np.mgrid[:64, :64]
    low = np.repeat(np.sin(2 * np.pi * x / 64)[..., None], 3, axis=2)
    high = np.repeat(np.sin(2 * np.pi * 0.4 * x)[..., None], 3, axis=2)
    assert high_frequency_share(low) < 1e-6
    assert high_frequency_share(high) > 0.99


def test_fft_render_has_less_high_frequency_power_than_pixel(effnet):
    """Same objective, steps and seed: the fft render's power above a quarter of the sampling rate is at
    most 0.8x the pixel render's."""
    plan = plan_render(effnet, class_spec="goldfish")
    shares = {}
    for param in ("pixel", "fft"):
        settings = RenderSettings(param=param, height=128, width=128, steps=24, seed=0)
        objective = tile_targets(plan.objective, 1)
        image = Renderer(effnet, plan.objective, settings).render(1, objective.targets(), np.random.default_rng(0),
                                                                  progress=False)[0]
        shares[param] = high_frequency_share(image)
    print(f"high-frequency share: pixel {shares['pixel']:.3f}, fft {shares['fft']:.3f}, "
          f"ratio {shares['fft'] / shares['pixel']:.2f}")
    assert shares["fft"] <= 0.8 * shares["pixel"]

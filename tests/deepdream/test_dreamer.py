"""The engine in-process, on efficientnet_lite0's real weights: step, octaves, objectives, presets."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import models
from deepdream import transforms
from deepdream.colour import IMAGENET_SQRT_COV, DecorrelatedSpace, PixelSpace
from deepdream.errors import DreamError
from deepdream.image_io import load_image
from deepdream.objectives import build_objective, guided_dot
from deepdream.presets import PRESETS
from deepdream.dreamer import Dreamer, dream
from deepdream.settings import DreamSettings
from deepdream.step import make_step

ROOT = Path(__file__).resolve().parents[2]
CHELSEA = ROOT / "assets" / "chelsea.png"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return load_image(CHELSEA, max_size=96)


def layer_score(model, rgb: np.ndarray, layer: str = "block10") -> float:
    act = model(model.preprocess(mx.array(rgb[None])), outputs=[layer])[layer]
    return float(mx.mean(act * act))


def test_every_preset_names_real_layers_of_its_model():
    for name, preset in PRESETS.items():
        assert preset.model in models.MODELS, name
        # build_model is lazy in MLX (parameters are not materialised), so this is cheap.
        models.build_model(preset.model).check_layers(preset.layers)
        DreamSettings(**preset.values()).validate()


@pytest.mark.parametrize("name", [n for n, p in PRESETS.items() if p.model != "efficientnet_lite0"])
def test_recipes_run_on_their_architecture(name):
    """Every zoo recipe dreams as written (random-init weights, one step at a small size): layers, jitter
    bigger than the image, multi-layer objectives."""
    preset = PRESETS[name]
    model = models.build_model(preset.model)
    model.eval()
    settings = DreamSettings(**{**preset.values(), "steps": 1, "octaves": 1, "seed": 0})
    rgb = np.random.default_rng(0).random((96, 112, 3), dtype=np.float32)
    out = Dreamer(model, settings, quiet=True)(rgb)
    assert out.shape == rgb.shape and np.isfinite(out).all() and not np.array_equal(out, rgb)


def test_the_issue_recipes_are_presets_verbatim():
    g = PRESETS["googlenet"]
    assert (g.steps, g.lr, g.octaves, g.scale, g.jitter, g.smoothing) == (22, 0.061, 4, 1.8, 26, 0.08)
    assert g.layers == ("inception3a", "inception4e", "inception5b")
    assert PRESETS["vgg16"].values() == {"layers": ("relu4_2",), "steps": 24, "lr": 0.07, "octaves": 4,
                                         "scale": 1.8, "jitter": 36, "smoothing": 0.19}
    assert PRESETS["vgg19"].values()["layers"] == ("relu5_2",) and PRESETS["vgg19"].lr == 0.045
    assert PRESETS["vgg16_relu5"].layers == ("relu5_1",) and PRESETS["vgg16_relu5"].jitter == 10
    assert PRESETS["resnet50"].layers == ("layer3_2", "layer3_5") and PRESETS["resnet50"].lr == 0.13


def test_step_raises_objective_and_keeps_pixels_valid(effnet, photo):
    objective = build_objective(effnet, ["block10"])
    step = make_step(effnet, objective)
    state = step.space.encode(photo)
    losses = []
    for i in range(4):
        state, loss = step(state, (i, -i), transforms.smoothing_sigma(i, 4, 0.5), 0.1)
        losses.append(loss)
    assert losses[-1] > losses[0]
    rgb = step.space.decode(state)
    assert rgb.shape == photo.shape and rgb.min() >= -1e-5 and rgb.max() <= 1 + 1e-5


def test_decorrelated_space_round_trips(effnet, photo):
    space = DecorrelatedSpace(effnet, IMAGENET_SQRT_COV)
    np.testing.assert_allclose(space.decode(space.encode(photo)), photo, atol=1e-5)
    pixel = PixelSpace(effnet)
    np.testing.assert_allclose(np.array(space.to_input(space.encode(photo))), np.array(pixel.encode(photo)),
                               atol=1e-4)


def test_guided_dot_pushes_toward_best_match():
    acts = mx.array(np.array([[[[1.0, 0.0], [0.0, 1.0]]]], np.float32))      # two positions
    guide = mx.array(np.array([[2.0, 0.1], [0.1, 3.0]], np.float32))
    grad = mx.grad(lambda a: guided_dot(a, guide))(acts)
    # each position's gradient is its best-matching guide vector (scaled by 1 / positions)
    np.testing.assert_allclose(np.array(grad)[0, 0], np.array([[2.0, 0.1], [0.1, 3.0]]) / 2, rtol=1e-6)


def test_small_image_reduces_octaves_with_a_notice(effnet):
    notes = []
    dreamer = Dreamer(effnet, DreamSettings(layers=("block5",), octaves=4, scale=2.0, steps=1), notify=notes.append)
    sizes = dreamer.octave_sizes(70, 90)
    assert min(sizes[0]) >= effnet.MIN_INPUT_SIZE and len(sizes) == 2
    assert len(notes) == 1 and "using 2" in notes[0]
    dreamer.octave_sizes(70, 90)
    assert len(notes) == 1  # said once, not once per video frame
    with pytest.raises(DreamError, match="at least 32 px"):
        dreamer(np.zeros((20, 40, 3), np.float32))


def test_dream_changes_image_and_raises_layer(effnet, photo):
    settings = DreamSettings(layers=("block10",), octaves=2, scale=1.4, steps=4, lr=0.1, jitter=8, seed=0)
    out = dream(effnet, photo, settings)
    assert out.shape == photo.shape and out.dtype == np.float32
    assert layer_score(effnet, out) > 1.3 * layer_score(effnet, photo)
    np.testing.assert_array_equal(out, dream(effnet, photo, settings))  # seeded: identical


def test_caffe_normalisation_dreams_too(effnet, photo):
    settings = DreamSettings(layers=("block10",), octaves=1, steps=4, lr=0.1, jitter=8, seed=0, grad_norm="mean-abs")
    out = dream(effnet, photo, settings)
    assert layer_score(effnet, out) > 1.2 * layer_score(effnet, photo)
    assert not np.array_equal(out, dream(effnet, photo, DreamSettings(**{**settings.as_dict(), "grad_norm": "std"})))


def test_bad_objectives_are_clear(effnet, tmp_path):
    with pytest.raises(models.UnknownLayerError, match="Did you mean 'block10'"):
        Dreamer(effnet, DreamSettings(layers=("blok10",)))
    with pytest.raises(DreamError, match="has 112 channels"):
        Dreamer(effnet, DreamSettings(layers=("block10",), channels=(112,)))
    with pytest.raises(DreamError, match="guide image .* not found"):
        Dreamer(effnet, DreamSettings(guide=str(tmp_path / "missing.png")))
    with pytest.raises(DreamError, match="no colour_matrix"):
        Dreamer(effnet, DreamSettings(decorrelate="model"))
    with pytest.raises(DreamError, match="--tile-size"):
        Dreamer(effnet, DreamSettings(tile_size=40))


def test_dream_snapshots_every_n_steps_and_each_octave(effnet):
    settings = DreamSettings(layers=("block5",), octaves=2, scale=1.5, steps=4, seed=0)
    shots = []
    rgb = np.full((72, 72, 3), 0.5, np.float32)
    Dreamer(effnet, settings, quiet=True)(rgb, snapshot=shots.append, save_every=2)
    # octave 1: step 2 and its end (step 4); octave 2: step 2 (its end is the result)
    assert len(shots) == 3 and all(s.shape == (72, 72, 3) for s in shots)


def test_the_bars_eta_leaves_out_the_first_steps_compile(effnet, photo, monkeypatch, capsys):
    """The first step also compiles (on a new machine MLX builds kernels, for up to a minute): a line
    above the bar says so when it is slow, and the ETA comes from the other steps."""
    import time

    from deepdream import progress
    from deepdream.step import DreamStep

    real_step = DreamStep.__call__
    calls = []

    def timed_step(self, *args):
        calls.append(None)
        time.sleep(3.0 if len(calls) == 1 else 0.2)    # a slow first step, then steady ones
        return real_step(self, *args)

    monkeypatch.setattr(DreamStep, "__call__", timed_step)
    monkeypatch.setattr(progress, "SLOW_FIRST_STEP_S", 1.0)
    settings = DreamSettings(layers=("block10",), steps=5, octaves=1, tile_size=0)
    Dreamer(effnet, settings)(photo, progress=True)
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert progress.SLOW_FIRST_STEP in lines, lines             # on a line of its own
    assert lines.index(progress.SLOW_FIRST_STEP) < next(i for i, line in enumerate(lines) if " 1/5 [" in line)
    after_two = [line for line in lines if " 2/5 [" in line]
    assert after_two, lines
    eta = after_two[0].split("<")[1].split(",")[0]          # "00:00" from "[00:00<00:00, ...]"
    minutes, seconds = (int(v) for v in eta.split(":"))
    assert minutes * 60 + seconds <= 1, after_two[0]         # 3 steps of 0.2 s left, not 3 of ~1.5 s

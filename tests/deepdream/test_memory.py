"""The memory budget: sizes, the plan, the measured per-pixel cost and its prediction, the errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepdream import memory
from deepdream.errors import DreamError
from deepdream.image_io import load_image
from deepdream.dreamer import Dreamer
from deepdream.settings import DreamSettings
from tests.deepdream.test_dreamer import CHELSEA

ROOT = Path(__file__).resolve().parents[2]
LINUX_PROBE = isinstance(memory.make_probe(), memory.LinuxProbe)


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    """One profile cache for this module's tests, apart from the user's."""
    path = tmp_path_factory.getbasetemp() / "memory-cache" / "profiles.json"
    monkeypatch.setattr(memory, "cache_path", lambda: path)


@pytest.mark.parametrize("text,expected", [("6GB", 6e9), ("500MB", 5e8), ("4GiB", 4 * 2**30), ("1.5 gb", 1.5e9),
                                           ("6", 6e9), ("123B", 123)])
def test_parse_bytes(text, expected):
    assert memory.parse_bytes(text) == int(expected)


@pytest.mark.parametrize("count,expected", [(3.5 * 2**30, "3.8 GB"), (24e9, "24 GB"), (3e8, "300 MB"),
                                            (1.5e6, "1.5 MB"), (1000, "1.0 kB"), (999, "999 bytes"), (0, "0 bytes")])
def test_format_bytes_one_unit_and_small_sizes_as_they_are(count, expected):
    """The unit --max-memory is written in (GB = 1e9 bytes), and a 1 kB budget is not shown as "0 MB"."""
    assert memory.format_bytes(count) == expected
    if count:
        assert memory.parse_bytes(expected.replace(" ", "").replace("bytes", "b")) == pytest.approx(count, rel=0.06)


@pytest.mark.parametrize("text", ["six", "6XB", "", "-1GB"])
def test_parse_bytes_rejects(text):
    with pytest.raises(ValueError, match="not a memory size"):
        memory.parse_bytes(text)


def test_default_budget_is_a_share_of_the_machine_capped():
    assert 0 < memory.default_budget() <= min(memory.total_memory() * memory.DEFAULT_SHARE, memory.DEFAULT_CAP)


PROFILE = memory.Profile(bytes_per_pixel=1000.0, overhead=50e6, tile_bytes_per_pixel=900.0, tile_overhead=40e6)


def test_plan_is_whole_when_it_fits_else_the_largest_tile_that_fits():
    kwargs = dict(min_tile=64, whole_copies=0, tiled_copies=2)
    whole = memory.plan_octave(PROFILE, 100e6, 1000, 1000, int(2e9), **kwargs)
    assert whole.tile is None and whole.predicted == pytest.approx(100e6 + 50e6 + 1000 * 1e6)
    plan = memory.plan_octave(PROFILE, 100e6, 3000, 4000, int(1e9), **kwargs)
    assert plan.tile is not None and plan.tile % memory.TILE_STEP == 0
    assert plan.predicted <= 1e9 < plan.whole
    bigger = memory.predict(PROFILE, 100e6, 3000, 4000, plan.tile + memory.TILE_STEP, image_copies=2)
    assert bigger > 1e9   # the next tile size up would not fit: this is the largest
    assert plan.tile_count == len(memory.transforms.tile_bounds(3000, plan.tile)) * len(
        memory.transforms.tile_bounds(4000, plan.tile))


def test_plan_that_cannot_fit_names_the_budget_and_the_flags():
    with pytest.raises(DreamError) as error:
        memory.plan_octave(PROFILE, 100e6, 4000, 6000, int(0.3e9), min_tile=64, whole_copies=0, tiled_copies=2,
                           what="vgg16")
    message = str(error.value)
    assert "vgg16 at 6000x4000" in message and "300 MB memory budget" in message
    assert "--max-memory" in message and "--max-size" in message and "\n" not in message


def measured_peak(dreamer: Dreamer, photo: np.ndarray) -> float:
    probe = dreamer.memory.probe
    probe.release()
    probe.reset_peak()
    result = dreamer(photo)
    assert result.shape == photo.shape
    return probe.peak()


@pytest.mark.skipif(not LINUX_PROBE, reason="the process's resettable peak (VmHWM) is Linux's")
def test_prediction_matches_the_measured_peak(effnet):
    """The profile (small steps) predicts a bigger dream's peak within 25%, whole and tiled."""
    photo = load_image(CHELSEA)
    photo = np.asarray(Image.fromarray((photo * 255).astype(np.uint8)).resize((1200, 800)), np.float32) / 255
    settings = DreamSettings(layers=("block10",), octaves=1, steps=2, seed=0, max_memory=int(8e9))
    whole = Dreamer(effnet, settings, quiet=True)
    whole.profile()
    plan = whole.plan(800, 1200)
    assert plan.tile is None
    measured = measured_peak(whole, photo)
    assert abs(plan.predicted / measured - 1) < 0.25, (plan.predicted, measured)
    # a budget of about half the whole image's step: tiles. The resident memory is read as the plan
    # reads it, after freed memory goes back (the dream just run left its heap at its peak).
    whole.memory.probe.release()
    resident = whole.memory.probe.resident()
    budget = int(resident + (plan.predicted - resident) / 2)
    tiled = Dreamer(effnet, DreamSettings(**{**settings.as_dict(), "max_memory": budget}), quiet=True)
    plan = tiled.plan(800, 1200)
    assert plan.tile is not None
    measured = measured_peak(tiled, photo)
    assert abs(plan.predicted / measured - 1) < 0.25, (plan.predicted, measured)


def test_small_budget_tiles_and_keeps_the_size(effnet, capsys):
    photo = load_image(CHELSEA)
    photo = np.asarray(Image.fromarray((photo * 255).astype(np.uint8)).resize((900, 600)), np.float32) / 255
    settings = DreamSettings(layers=("block10",), octaves=2, steps=1, seed=0)
    whole = Dreamer(effnet, settings, quiet=True).plan(600, 900)
    probe = memory.make_probe()
    probe.release()                       # read as the plan reads it
    budget = int((whole.predicted + probe.resident()) / 2)
    messages = []
    dreamer = Dreamer(effnet, DreamSettings(**{**settings.as_dict(), "max_memory": budget}), notify=messages.append)
    result = dreamer(photo, progress=False)
    assert result.shape == photo.shape and np.isfinite(result).all()
    plan = dreamer.plan(600, 900)
    assert plan.tile is not None and plan.predicted <= budget
    tiling = [m for m in messages if "tiles of" in m]
    assert len(tiling) == 1 and "memory budget" in tiling[0] and "--max-memory" in tiling[0]
    # an explicit whole-image request wins over the budget
    forced = Dreamer(effnet, DreamSettings(**{**settings.as_dict(), "max_memory": budget, "tile_size": 0}), quiet=True)
    assert forced.plan(600, 900).tile is None


def test_profile_is_measured_once_then_read_from_the_cache(effnet, monkeypatch):
    settings = DreamSettings(layers=("block9",), octaves=1, steps=1)
    first = Dreamer(effnet, settings, quiet=True).profile()
    assert first.bytes_per_pixel > 0
    def measure_again(*args, **kwargs):
        raise RuntimeError("measured again")

    monkeypatch.setattr(memory, "measure_profile", measure_again)
    assert Dreamer(effnet, settings, quiet=True).profile() == first
    with pytest.raises(RuntimeError, match="measured again"):   # another layer set is another profile
        Dreamer(effnet, DreamSettings(layers=("block7",), octaves=1, steps=1), quiet=True).profile()


@pytest.mark.parametrize("script,extra,output", [
    ("dream.py", ["--model", "efficientnet_lite0"], "out.png"),
    ("dream.py", ["--model", "all"], "all"),
    ("dream_video.py", ["--model", "efficientnet_lite0", "--frames", "3", "--max-size", "1500"], "zoom.mp4"),
], ids=["dream", "model-all", "video"])
def test_dream_that_cannot_fit_fails_before_any_work(effnet, tmp_path, script, extra, output):
    """The same policy wherever the engine dreams: one line naming the flags, nothing written."""
    photo = tmp_path / "photo.png"
    Image.open(CHELSEA).convert("RGB").resize((1500, 1000)).save(photo)
    out = tmp_path / output
    result = subprocess.run([sys.executable, str(ROOT / script), "--input", str(photo), "--output", str(out),
                             *extra, "--max-memory", "100MB", "--steps", "1"],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: efficientnet_lite0 at 1500x1000 needs about"), result.stderr
    assert "--max-memory" in lines[-1] and "--max-size" in lines[-1]
    assert "Traceback" not in result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_bad_max_memory_is_a_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "dream.py"), "--max-memory", "lots"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: argument --max-memory: 'lots' is not a memory size; write it like 6GB or 500MB (see dream.py --help)"]

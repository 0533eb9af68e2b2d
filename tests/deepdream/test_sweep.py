"""Sweeps: one file per item and a contact sheet, resumed after the last finished item, Ctrl-C reports progress."""

from __future__ import annotations

import numpy as np
import pytest

import models
from deepdream.errors import Interrupted
from deepdream.image_io import load_image
from deepdream.sweep import SHEET_NAME, run_sweep
from deepdream.visualise import Renderer, RenderSettings, plan_render

#: A tiny, quick render for plumbing tests (not for judging images).
TINY = RenderSettings(height=64, width=64, steps=3, seed=0)

@pytest.fixture(scope="module")
def effnet(weights_dir):
    from convert import make_default_weights  # the scripts' first-run conversion

    make_default_weights("efficientnet_lite0")
    return models.load_model("efficientnet_lite0")


def test_sweep_writes_items_and_sheet_and_resumes(effnet, tmp_path, monkeypatch):
    plan = plan_render(effnet, layers=["block3"], channels=[0, 1, 2], sweep=True)
    renderer = Renderer(effnet, plan.objective, TINY)
    written = run_sweep(renderer, plan, tmp_path, batch=2, seed=0, quiet=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["0000_block3_0.png", "0001_block3_1.png", "0002_block3_2.png", SHEET_NAME]
    assert len(written) == 4
    first = load_image(tmp_path / "0002_block3_2.png")
    (tmp_path / "0002_block3_2.png").unlink()
    calls = []
    original = renderer.render
    monkeypatch.setattr(renderer, "render", lambda n, *a, **k: calls.append(n) or original(n, *a, **k))
    run_sweep(renderer, plan, tmp_path, batch=2, seed=0, quiet=True)
    assert calls == [1]                                     # only the unfinished batch
    np.testing.assert_array_equal(load_image(tmp_path / "0002_block3_2.png"), first)

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    (tmp_path / "0000_block3_0.png").unlink()
    monkeypatch.setattr(renderer, "render", interrupted)
    with pytest.raises(Interrupted, match="2 of 3 items"):
        run_sweep(renderer, plan, tmp_path, batch=2, seed=0, quiet=True)

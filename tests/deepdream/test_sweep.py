"""Sweeps: one file per item and a contact sheet, a rerun making only the batches missing something and writing
only the missing files, items seeded and named by what they render, Ctrl-C reports progress."""

from __future__ import annotations

from pathlib import Path

import pytest

import models
from deepdream.errors import Interrupted
from deepdream.sweep import SHEET_NAME, SweepSection, item_seed, run_sweep
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
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.glob("000*.png")}
    (tmp_path / "0001_block3_1.png").unlink()
    calls = []
    original = renderer.render
    monkeypatch.setattr(renderer, "render", lambda n, *a, **k: calls.append(n) or original(n, *a, **k))
    written = run_sweep(renderer, plan, tmp_path, batch=2, seed=0, quiet=True)
    # Its batch (channels 0 and 1) is rendered again, whole, and only the missing file written: the same bytes.
    assert calls == [2] and written == [tmp_path / "0001_block3_1.png", tmp_path / SHEET_NAME]
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.glob("000*.png")}
    assert after["0001_block3_1.png"][0] == before["0001_block3_1.png"][0]
    assert {k: v for k, v in after.items() if k != "0001_block3_1.png"} == \
           {k: v for k, v in before.items() if k != "0001_block3_1.png"}

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    (tmp_path / "0000_block3_0.png").unlink()
    monkeypatch.setattr(renderer, "render", interrupted)
    with pytest.raises(Interrupted, match="2 of 3 items"):
        run_sweep(renderer, plan, tmp_path, batch=2, seed=0, quiet=True)


def test_items_are_seeded_and_named_by_what_they_render(effnet):
    """Each item's seed comes from --seed and its channel or class, and its file is numbered by it: an
    item is found, and seeded alike, in any run that asks for it."""
    some = SweepSection(plan_render(effnet, layers=["block3"], channels=[5, 2], sweep=True), Path("f"))
    other = SweepSection(plan_render(effnet, layers=["block3"], channels=[2, 9], sweep=True), Path("f"))
    assert [p.name for p in some.paths] == ["0005_block3_5.png", "0002_block3_2.png"]
    assert some.seeds(7)[1] == other.seeds(7)[0] == item_seed(7, "channel:block3:2")
    assert some.seeds(7)[1] != some.seeds(8)[1] and item_seed(None, "x") == item_seed(0, "x")
    classes = SweepSection(plan_render(effnet, class_spec=["goldfish", "0-1"], sweep=True), Path("f"))
    assert [label for label, _ in classes.plan.items] == ["goldfish", "tench"]   # each once, in the order given
    assert classes.seeds(0)[0] == item_seed(0, "class:logits:1")
    assert [len(u) for u in SweepSection(plan_render(effnet, layers=["block3"], channels="all", sweep=True),
                                         Path("f")).units(16)] == [16, 16, 8]   # plan order, fixed size

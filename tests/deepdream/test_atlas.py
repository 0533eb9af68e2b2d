"""The atlas: its sections in network order, one job of every section's batches, the estimate before it
starts, resume (a rerun makes the batches holding what is missing and writes exactly the missing files),
other settings refused, and the page written even when interrupted."""

from __future__ import annotations

import pytest

from deepdream.atlas import CLASSES, AtlasJob, describe_atlas, format_duration, plan_atlas
from deepdream.errors import DreamError, Interrupted
from deepdream.gallery import write_gallery
from deepdream.jobs import run_job
from deepdream.visualise import Renderer, RenderSettings
from tests.pages import check_site

#: Tiny renders for plumbing (not for judging images).
TINY = RenderSettings(height=32, width=32, steps=2, batch=4)


def test_sections_in_network_order_with_their_channels_and_classes(effnet, tmp_path):
    notices = []
    sections = plan_atlas(effnet, tmp_path, layers=["block3", "stem"], channels=[0, 1, 35],
                          classes=["goldfish", "0-2"], notify=notices.append)
    assert [(s.title, s.kind, s.count) for s in sections] == [
        ("stem", "channel", 32), ("block3", "channel", 40), (CLASSES, "class", 1000)]
    assert [target for _, target in sections[0].plan.items] == [0, 1]          # stem has no channel 35
    assert [target for _, target in sections[1].plan.items] == [0, 1, 35]
    assert notices == ["some layers have fewer channels than --channels asks for; they get those they have: stem (32)"]
    assert [label for label, _ in sections[2].plan.items] == ["goldfish", "tench", "great white shark"]
    assert [p.name for p in sections[2].paths] == ["0001_goldfish.png", "0000_tench.png", "0002_great_white_shark.png"]
    assert sections[1].folder == tmp_path / "block3"
    # Defaults: the model's dream layers, every channel; classes alone when only they are asked for.
    default, = plan_atlas(effnet, tmp_path)
    assert (default.layer, len(default.plan.items)) == ("block10", default.count)
    only, = plan_atlas(effnet, tmp_path, classes=["all"])
    assert (only.kind, len(only.plan.items)) == ("class", 1000)
    assert [s.layer for s in plan_atlas(effnet, tmp_path, layers=["all"], channels=[0])] == effnet.layer_names


@pytest.mark.parametrize("kwargs, message", [
    ({"channels": [0]}, "--channels needs --layers"),
    ({"layers": ["block3"], "channels": [99]}, "none of --channels 99"),
    ({"layers": ["block99"]}, "block99"),
    ({"classes": ["goldfsh"]}, "unknown class 'goldfsh'"),
    ({"classes": ["5-2"]}, "--class range '5-2' is empty"),
    ({"classes": ["990-1005"]}, "class index 1005 is out of range"),
])
def test_bad_choices_fail_before_any_work(effnet, tmp_path, kwargs, message):
    with pytest.raises(Exception, match=message) as caught:
        plan_atlas(effnet, tmp_path, **kwargs)
    assert isinstance(caught.value, (DreamError, ValueError))
    assert not any(tmp_path.iterdir())


def _atlas(effnet, folder, **kwargs) -> AtlasJob:
    def setup():
        return effnet, TINY, plan_atlas(effnet, folder, layers=["block1", "block3"], channels=[0, 1, 2],
                                        classes=["1", "2"])
    return AtlasJob(setup, folder, TINY.batch, seed=0, **kwargs)


def _page(job: AtlasJob):
    """The page writer a script passes to run_job (``finished``)."""
    def write(report):
        gallery = describe_atlas(job, report, title="atlas", details=(), command=None,
                                 remake=lambda section, members: f"remake {section.title} {members}")
        write_gallery(gallery, job.folder)
    return write


def _count_renders(monkeypatch) -> list[int]:
    """Images rendered for keeps (the estimate's probe passes ``steps`` and is not counted)."""
    rendered: list[int] = []
    original = Renderer.render

    def render(self, n, *args, **kwargs):
        if kwargs.get("steps") is None:
            rendered.append(n)
        return original(self, n, *args, **kwargs)
    monkeypatch.setattr(Renderer, "render", render)
    return rendered


def test_one_job_of_every_section_renders_only_the_batches_missing_something(effnet, tmp_path, monkeypatch):
    rendered = _count_renders(monkeypatch)
    notices = []
    job = _atlas(effnet, tmp_path)
    run_job(job, quiet=True, notify=notices.append, finished=_page(job))
    assert rendered == [3, 3, 2]                             # each section's batches (of up to 4): one job
    assert "8 images in 3 sections; 8 to render at 32x32 px, 2 steps each: about" in notices[0]
    assert "measured: a 2-step probe of each unfinished section, 4 images a batch" in notices[0]
    paths = [p for s in job.sections for p in s.paths]
    page = tmp_path / "index.html"
    assert all(p.is_file() for p in paths) and len(check_site(page)[page.resolve()].images) == 8

    gone = [paths[1], paths[5], paths[7]]                    # one from each section
    before = {p: p.read_bytes() for p in gone}
    stamps = {p: p.stat().st_mtime_ns for p in paths if p not in gone}
    for p in gone:
        p.unlink()
    rendered.clear()
    notices.clear()
    job = _atlas(effnet, tmp_path)
    report = run_job(job, quiet=True, notify=notices.append, finished=_page(job))
    assert rendered == [3, 3, 2]                             # the batches holding them, whole...
    assert sorted(report.written) == sorted(gone)            # ...and exactly those three files written
    assert {p: p.read_bytes() for p in gone} == before       # the same bytes as before
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps   # the others untouched
    assert "8 images in 3 sections (5 already in" in notices[0]
    assert "; 3 to render (with the rest of their batches: 8 renders) at" in notices[0]
    assert len(check_site(page)[page.resolve()].images) == 8
    # Nothing missing: no probe, no notice, no render; the page is written all the same.
    rendered.clear()
    notices.clear()
    page.unlink()
    job = _atlas(effnet, tmp_path)
    run_job(job, quiet=True, notify=notices.append, finished=_page(job))
    assert rendered == [] and page.is_file()
    assert notices == ["all 8 images in " + str(tmp_path) + ": already made with these settings (--overwrite "
                       "makes them again)"]


def test_other_settings_are_refused_unless_overwrite(effnet, tmp_path):
    run_job(_atlas(effnet, tmp_path), quiet=True)
    wider = RenderSettings(height=32, width=36, steps=2, batch=4)
    job = _atlas(effnet, tmp_path)
    job.setup = lambda: (effnet, wider, plan_atlas(effnet, tmp_path, layers=["block1", "block3"], channels=[0, 1, 2],
                                                    classes=["1", "2"]))
    with pytest.raises(DreamError, match=r"0000_block1_0.png' \(and 7 more\) was made with other settings "
                                         r"\(--width 32 -> 36\); add --overwrite"):
        run_job(job, quiet=True)
    job.overwrite = True
    assert len(run_job(job, quiet=True).written) == 8


def test_interrupted_atlas_keeps_its_images_and_page(effnet, tmp_path, monkeypatch):
    job = _atlas(effnet, tmp_path)
    original = Renderer.render
    calls = []

    def render(self, n, *args, **kwargs):
        if kwargs.get("steps") is None:
            calls.append(n)
            if len(calls) == 2:
                raise KeyboardInterrupt
        return original(self, n, *args, **kwargs)
    monkeypatch.setattr(Renderer, "render", render)
    with pytest.raises(Interrupted, match="3 of 8 images are in .* \\(its index.html shows them\\)"):
        run_job(job, quiet=True, finished=_page(job))
    index = check_site(tmp_path / "index.html")[(tmp_path / "index.html").resolve()]
    assert len(index.images) == 3


def test_durations_read_like_a_person_writes_them():
    assert [format_duration(s) for s in (0.2, 4.4, 75, 3 * 3600 + 125, 3 * 86400)] == [
        "under a second", "4 s", "1 min 15 s", "3 h 02 min", "3.0 days"]

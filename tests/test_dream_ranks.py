"""dream.py and dream_video.py on two ranks (ring backend, localhost, ``tests/ranks.py``): the same bytes
as one process, inputs on rank 0's host only, a sweep, an atlas, a clip in chunks with its border measured,
the zoom refused, and a rank killed mid-job. Tiny images and few steps: each test well under a minute.

Every run here sets one thread per process (what two ranks on this 2-core host get anyway), since a
result is the same bytes for the same thread count.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import ranks
from tests.ranks import error_lines
from tests.test_dream_video_clip import audio_seconds, decode

ROOT = Path(__file__).resolve().parent.parent
DREAM = str(ROOT / "dream.py")
VIDEO = str(ROOT / "dream_video.py")
ONE_THREAD = {var: "1" for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
TINY = ["--model", "efficientnet_lite0", "--layers", "block5", "--octaves", "1", "--steps", "2", "--seed", "0"]
needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds ranks through /proc")


@pytest.fixture(scope="module")
def lite0(weights_dir: Path) -> Path:
    from convert import make_default_weights

    return make_default_weights("efficientnet_lite0")


def one_process(argv: list, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**os.environ, **ONE_THREAD})


def two_ranks(argv: list) -> subprocess.CompletedProcess:
    return ranks.launch(list(map(str, argv)), 2, timeout=120, env={**os.environ, **ONE_THREAD})


def mixed_photos(folder: Path, count: int = 5) -> Path:
    """Photos of mixed sizes: the ranks' shares are balanced by pixel-steps, not by count."""
    folder.mkdir(parents=True)
    cat = Image.open(ROOT / "assets" / "chelsea.png").convert("RGB")
    sizes = [(128, 96), (64, 64), (96, 128), (72, 64), (112, 80), (64, 96), (80, 80), (96, 72)]
    for i in range(count):
        cat.resize(sizes[i % len(sizes)]).save(folder / f"p{i}.png")
    return folder


def same_files(a: Path, b: Path) -> list[str]:
    """The images in two folders: the same names and bytes (the gallery pages aside: they name their folder)."""
    names = sorted(p.name for p in a.iterdir() if p.name not in ("index.html", "index_files"))
    assert names == sorted(p.name for p in b.iterdir() if p.name not in ("index.html", "index_files"))
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    return names


def test_a_batch_on_two_ranks_is_the_bytes_of_one_process(lite0, tmp_path: Path) -> None:
    src = mixed_photos(tmp_path / "photos")
    one = one_process([DREAM, "--input", src, "--output", tmp_path / "one", *TINY, "--quiet"])
    assert one.returncode == 0, one.stderr
    two = two_ranks([DREAM, "--input", src, "--output", tmp_path / "two", *TINY])
    assert two.returncode == 0 and not error_lines(two.stderr) and "exited with code" not in two.stderr, two.stderr
    assert len(same_files(tmp_path / "one", tmp_path / "two")) == 5
    assert two.stderr.count("5 dreams to make over 2 ranks (ring), 1 thread each") == 1  # rank 0 speaks alone
    assert two.stdout.count("p0_efficientnet_lite0.png") == 1
    shares = [int(s) for s in re.search(r"shares of the work: (\d+)% (\d+)%", two.stderr).groups()]
    assert max(shares) <= 1.25 * 50, shares


def test_only_the_launching_host_needs_the_inputs(lite0, tmp_path: Path) -> None:
    """Rank 1 runs in a folder where neither the photos nor the guide exist, with relative paths:
    they reach it over the collectives, the outputs come back to rank 0, and rank 1 writes nothing."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    mixed_photos(here / "photos", 3)
    Image.open(ROOT / "assets" / "coffee.png").convert("RGB").resize((64, 64)).save(here / "guide.png")
    elsewhere.mkdir()
    argv = [DREAM, "--input", "photos", "--guide", "guide.png", "--output", "out", *TINY, "--quiet"]
    procs = ranks.start_by_hand(argv, tmp_path, env=ONE_THREAD, cwds=[here, elsewhere])
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert list(elsewhere.iterdir()) == []
    assert one_process([*argv[:-1], "--output", "one", "--quiet"], cwd=here).returncode == 0
    assert len(same_files(here / "one", here / "out")) == 3


def test_a_sweep_on_two_ranks(lite0, tmp_path: Path) -> None:
    sweep = ["--model", "efficientnet_lite0", "--layers", "block3", "--channels", "0-4", "--sweep", "--batch", "2",
             "--steps", "2", "--width", "64", "--height", "64", "--seed", "0", "--quiet"]
    assert one_process([DREAM, *sweep, "--output", tmp_path / "one"]).returncode == 0
    two = two_ranks([DREAM, *sweep, "--output", tmp_path / "two"])
    assert two.returncode == 0 and not error_lines(two.stderr), two.stderr
    names = same_files(tmp_path / "one", tmp_path / "two")
    assert names[-1] == "contact_sheet.png" and len(names) == 6
    assert (tmp_path / "two" / "index.html").is_file()


def test_an_atlas_on_two_ranks(lite0, tmp_path: Path) -> None:
    """One job of every section's batches, shared over the ranks: the images one process makes, one page."""
    atlas = ["--atlas", "--model", "efficientnet_lite0", "--layers", "block1", "block3", "--channels", "0-3",
             "--batch", "2", "--steps", "2", "--width", "32", "--height", "32", "--seed", "0"]
    assert one_process([DREAM, *atlas, "--output", tmp_path / "one", "--quiet"]).returncode == 0
    two = two_ranks([DREAM, *atlas, "--output", tmp_path / "two"])
    assert two.returncode == 0 and not error_lines(two.stderr), two.stderr
    for section in ("block1", "block3"):
        assert len(same_files(tmp_path / "one" / section, tmp_path / "two" / section)) == 4
    assert two.stderr.count("atlas of efficientnet_lite0: 8 images in 2 sections; 8 to render") == 1
    assert "over 2 ranks (ring), 1 thread each" in two.stderr
    assert two.stdout.split() == [str(tmp_path / "two" / "index.html")]
    shares = [int(s) for s in re.search(r"shares of the work: (\d+)% (\d+)%", two.stderr).groups()]
    assert shares == [50, 50]                    # four batches of two, two each, across the sections


def motion_compensated_changes(frames: list[np.ndarray], step: int, margin: int = 16) -> np.ndarray:
    """Mean |frame t - frame t-1 moved by the clip's known pan| for each pair (the flicker measure)."""
    inner = slice(margin, -margin)
    return np.array([np.abs(b[inner, margin:-margin - step] - a[inner, margin + step:-margin]).mean()
                     for a, b in zip(frames, frames[1:])])


def test_a_clip_in_chunks_keeps_sound_and_time_and_hides_its_border(lite0, tmp_path: Path) -> None:
    """24 frames of a pan: rank 0 dreams 0-15 (the bytes one process makes), rank 1 16-23 after 8
    warm-up frames from 8; the video dissolves across the border, where the frame-to-frame change
    (motion-compensated) stays within 1.5x the median inside the chunks. Sound and timestamps are
    one process's."""
    from benchmarks.clips import PAN, pan_frames, write_clip

    clip = write_clip(tmp_path / "pan.mp4", pan_frames(24))
    quick = [VIDEO, "--video", clip, "--model", "efficientnet_lite0", "--octaves", "1", "--steps", "3", "--lr", "0.14",
             "--seed", "1", "--quiet"]
    assert one_process([*quick, "--output", tmp_path / "one.mp4"]).returncode == 0
    two = two_ranks([*quick, "--output", tmp_path / "two.mp4"])
    assert two.returncode == 0 and not error_lines(two.stderr), two.stderr
    for i in range(16):
        assert (tmp_path / "two_frames" / f"{i:05d}.png").read_bytes() == \
               (tmp_path / "one_frames" / f"{i:05d}.png").read_bytes()
    assert len(list((tmp_path / "two_frames").glob("*-to-00016.png"))) == 8
    frames, info = decode(tmp_path / "two.mp4")
    alone, alone_info = decode(tmp_path / "one.mp4")
    assert len(frames) == 24 and info["times"] == alone_info["times"] and info["audio"] == ["aac"]
    assert audio_seconds(tmp_path / "two.mp4") == audio_seconds(tmp_path / "one.mp4")
    changes = motion_compensated_changes(frames, PAN)
    inside = np.median(np.delete(changes, range(7, 16)))  # the pairs outside the dissolve
    assert changes[15] <= 1.5 * inside and changes.max() <= 1.5 * inside, changes / inside
    # Without the dissolve (--chunk-warmup 0: a hard cut) the border shows.
    cut = two_ranks([*quick, "--chunk-warmup", "0", "--output", tmp_path / "cut.mp4"])
    assert cut.returncode == 0, cut.stderr
    hard = motion_compensated_changes(decode(tmp_path / "cut.mp4")[0], PAN)
    assert hard[11] > 1.5 * np.median(np.delete(hard, [11])), hard  # no warm-up: the border at 12


def test_a_clip_s_guide_reaches_a_rank_whose_host_lacks_it(lite0, tmp_path: Path) -> None:
    """Rank 1 runs where neither the clip nor the guide exists: the guide reaches it with the job's
    context, as a batch's does, and its share of the frames is made."""
    from benchmarks.clips import pan_frames, write_clip

    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    write_clip(here / "pan.mp4", pan_frames(8))
    Image.open(ROOT / "assets" / "coffee.png").convert("RGB").resize((64, 64)).save(here / "guide.png")
    argv = [VIDEO, "--video", "pan.mp4", "--guide", "guide.png", "--model", "efficientnet_lite0", "--octaves", "1",
            "--steps", "2", "--seed", "1", "--chunk-warmup", "0", "--output", "out.mp4", "--quiet"]
    procs = ranks.start_by_hand(argv, tmp_path, env=ONE_THREAD, cwds=[here, elsewhere])
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert list(elsewhere.iterdir()) == []
    assert len(list((here / "out_frames").glob("0000[0-7].png"))) == 8 and (here / "out.mp4").stat().st_size > 0


def test_the_zoom_refuses_several_ranks_before_any_work(lite0, tmp_path: Path) -> None:
    proc = two_ranks([VIDEO, "--frames", "2", "--output", tmp_path / "z.mp4", "--model", "efficientnet_lite0"])
    assert error_lines(proc.stderr) == [
        "error: the zoom video is made one frame after another (each from the one before), so it runs on one "
        "process: start it without mlx.launch (2 ranks here); a --video clip is the video that spreads over ranks"]
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []


@needs_proc
def test_a_killed_rank_stops_the_job_and_the_rerun_makes_only_what_is_missing(lite0, tmp_path: Path) -> None:
    src, out = mixed_photos(tmp_path / "photos", 8), tmp_path / "out"
    argv = [DREAM, "--input", src, "--output", out, *TINY[:-4], "--steps", "12", "--seed", "0"]
    proc = ranks.start_launch(list(map(str, argv)), env={**os.environ, **ONE_THREAD})
    deadline = time.monotonic() + 90
    while not (out.is_dir() and any(out.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    line = ranks.kill_rank(proc)
    assert line.endswith("every rank stopped. run the same command to make what is missing")
    kept = sorted(p.name for p in out.iterdir())
    assert 0 < len(kept) < 8 and all(re.fullmatch(r"p\d_efficientnet_lite0\.png", n) for n in kept)  # whole files only
    rerun = one_process(argv)
    assert rerun.returncode == 0, rerun.stderr
    assert f"dreams: {8 - len(kept)} made, {len(kept)} skipped (already made), 0 failed" in rerun.stderr
    assert len(list(out.glob("*.png"))) == 8 and (out / "index.html").is_file()   # and the batch's page

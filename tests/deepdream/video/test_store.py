"""deepdream/video/store.py: where a run starts (frames kept, seed policy). The motion, encoding and
the whole command are covered through the script in tests/test_dream_video.py."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from deepdream.video.store import frame_path, resume_point, write_record


def _folder_with_frames(folder: Path, frames: int, seed: int) -> None:
    folder.mkdir()
    write_record(folder, {"version": 1, "dream": {"seed": seed}})
    for i in range(frames):
        Image.new("RGB", (4, 4)).save(frame_path(folder, i))


def test_a_continued_video_keeps_its_stored_seed(tmp_path: Path) -> None:
    folder = tmp_path / "v_frames"
    _folder_with_frames(folder, 3, seed=1234)
    resume = resume_point(folder, seed=None)
    assert (resume.done, resume.seed) == (3, 1234) and resume.stored["dream"]["seed"] == 1234
    assert resume_point(folder, seed=7).seed == 7          # an explicit --seed wins


def test_restart_and_an_empty_folder_start_over_with_a_new_seed(tmp_path: Path) -> None:
    folder = tmp_path / "v_frames"
    _folder_with_frames(folder, 2, seed=1234)
    restarted = resume_point(folder, seed=None, restart=True)
    assert restarted.stored is None and restarted.done == 0
    assert isinstance(restarted.seed, int) and 0 <= restarted.seed < 2**31
    fresh = resume_point(tmp_path / "none_frames", seed=None)
    assert (fresh.stored, fresh.done) == (None, 0)
    # A record without frames (stopped before the first one finished) does not pin the seed.
    empty = tmp_path / "e_frames"
    _folder_with_frames(empty, 0, seed=99)
    seeds = {resume_point(empty, seed=None).seed for _ in range(4)}
    assert len(seeds) > 1

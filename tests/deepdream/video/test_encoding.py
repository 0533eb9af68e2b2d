"""deepdream/video/encoding.py: the same frames make the same file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepdream.video.encoding import Timing, encode_h264


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs a process that may run on two or more CPUs")
def test_the_same_frames_encode_to_the_same_bytes_whatever_cpus_the_process_may_use(tmp_path: Path) -> None:
    """A resumed video must be byte for byte the uninterrupted one. x264 chose its thread count from
    the CPUs the process may use (a launcher or a container changes that) and its output depends on
    it; and its macroblock tree gave another file now and then for the same frames in one process."""
    rng = np.random.default_rng(0)
    base = (rng.random((360, 960, 3)) * 255).astype(np.uint8)
    frames = []
    for i in range(24):
        path = tmp_path / f"{i:05d}.png"
        Image.fromarray(np.ascontiguousarray(np.roll(base, 5 * i, axis=1)[:, :640])).save(path)
        frames.append(path)
    timing = Timing.constant(12, len(frames))
    cpus = os.sched_getaffinity(0)
    files = []
    for i in range(4):
        encode_h264(frames, tmp_path / f"all_cpus_{i}.mp4", timing)
        files.append((tmp_path / f"all_cpus_{i}.mp4").read_bytes())
    try:
        os.sched_setaffinity(0, {min(cpus)})
        encode_h264(frames, tmp_path / "one_cpu.mp4", timing)
    finally:
        os.sched_setaffinity(0, cpus)
    files.append((tmp_path / "one_cpu.mp4").read_bytes())
    assert len(set(files)) == 1, [len(f) for f in files]

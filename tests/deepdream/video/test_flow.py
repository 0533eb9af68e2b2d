"""deepdream/video/flow.py: the optical flow, the warp, the forward-backward check and scene cuts, on
motion known exactly (benchmarks/clips.py). The whole clip, flicker included, is tested through
the script in tests/test_dream_video_clip.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.clips import PAN, pan_frames, photo_strip
from deepdream.video.flow import Coherence, carry, dense_flow, gray, sample_along, unreliable_mask

ROOT = Path(__file__).resolve().parents[3]


def test_flow_finds_a_known_pan_and_warping_follows_it() -> None:
    a, b = pan_frames(2)
    flow = dense_flow(gray(b / 255.0), gray(a / 255.0))  # b(p) ~ a(p + flow)
    inner = flow[16:-16, 16:-16]
    assert np.abs(inner[..., 0] - PAN).mean() < 0.1 and np.abs(inner[..., 1]).mean() < 0.1
    warped = sample_along(a / 255.0, flow)
    assert np.abs(warped - b / 255.0)[16:-16, 16:-16].mean() < 0.01


def test_the_forward_backward_check_flags_what_was_hidden() -> None:
    """A textured patch slides 12 px right over a photo: the strip it uncovers has no source in the previous frame."""
    back = photo_strip(128, 160).astype(np.float32) / 255
    coffee = Image.open(ROOT / "assets" / "coffee.png").convert("RGB").resize((120, 80))
    patch = np.asarray(coffee, np.float32)[15:65, 30:80] / 255
    before, after = back.copy(), back.copy()
    before[40:90, 40:90] = patch
    after[40:90, 52:102] = patch
    backward = dense_flow(gray(after), gray(before))
    forward = dense_flow(gray(before), gray(after))
    bad = unreliable_mask(backward, forward)
    assert bad[46:84, 42:50].mean() > 0.9    # was under the patch, is background now
    assert bad[46:84, 60:95].mean() < 0.02   # the patch itself, moved
    assert bad[100:120].mean() < 0.02        # background far from it


def test_a_scene_cut_restarts_from_the_input_and_a_pan_does_not() -> None:
    a, b = (f / 255.0 for f in pan_frames(2))
    other = np.asarray(Image.open(ROOT / "assets" / "coffee.png").convert("RGB").resize((256, 192)), np.float32) / 255
    dreamed = np.clip(a + 0.2, 0, 1)
    moving = carry(a, dreamed, b, Coherence())
    assert not moving.cut and moving.unreliable < 0.1
    assert np.abs(moving.start - b).mean() > 0.1  # the dream came along
    cut = carry(a, dreamed, other, Coherence())
    assert cut.cut and np.array_equal(cut.start, other) and cut.fresh.min() == 1.0

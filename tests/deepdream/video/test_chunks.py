"""deepdream/video/chunks.py: how a clip's missing frames are cut into chunks for the ranks."""

from __future__ import annotations

from deepdream.video.chunks import Chunk, plan_chunks


def test_one_rank_continues_where_the_frames_stop() -> None:
    assert plan_chunks(16, set(), 1, 4, lambda i: False) == [Chunk(0, 16, 0, False, 0)]
    assert plan_chunks(16, set(range(5)), 1, 4, lambda i: False) == [Chunk(5, 16, 5, True, 0)]


def test_shares_are_equal_work_and_a_mid_scene_chunk_warms_up() -> None:
    chunks = plan_chunks(16, set(), 2, 4, lambda i: False)
    assert chunks == [Chunk(0, 10, 0, False, 0), Chunk(10, 16, 6, False, 1)]  # 10 frames each, 4 of them warm-up
    assert [c.warmed_up for c in chunks] == [False, True]
    assert [(c.first, c.begin) for c in plan_chunks(40, set(), 4, 4, lambda i: False)] == \
        [(0, 0), (13, 9), (22, 18), (31, 27)]


def test_a_border_moves_to_a_scene_cut_within_reach() -> None:
    assert plan_chunks(16, set(), 2, 4, lambda i: i == 8) == [Chunk(0, 8, 0, False, 0), Chunk(8, 16, 8, False, 1)]
    assert plan_chunks(16, set(), 2, 4, lambda i: i == 15)[1].begin == 6   # too far: warm up instead


def test_a_resumed_clip_continues_every_chunk_exactly() -> None:
    """After a stop, each run of missing frames continues from the saved frame before it, on any number of ranks."""
    chunks = plan_chunks(16, {0, 1, 2, 8, 9}, 2, 4, lambda i: False)
    assert chunks == [Chunk(3, 8, 3, True, 0), Chunk(10, 16, 10, True, 1)]
    assert not any(c.warmed_up for c in chunks)
    assert plan_chunks(16, set(range(8)), 2, 2, lambda i: False)[1] == Chunk(13, 16, 11, False, 1)
    # Where a second chunk's warm-up would cost as much as its frames, one rank makes them all.
    assert plan_chunks(12, set(range(8)), 2, 4, lambda i: False) == [Chunk(8, 12, 8, True, 0)]


def test_no_flow_needs_no_warm_up() -> None:
    assert plan_chunks(16, set(), 4, 4, None) == [Chunk(4 * r, 4 * r + 4, 4 * r, False, r) for r in range(4)]

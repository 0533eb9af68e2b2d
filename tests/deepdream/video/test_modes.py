"""deepdream/video/modes.py: a mode declares its flags, and every other mode refuses them by the owner's name."""

from __future__ import annotations

import pytest

import dream_video
from deepdream.errors import DreamError
from deepdream.video.clip import ClipMode
from deepdream.video.modes import choose
from deepdream.video.zoom import ZoomMode


def test_a_modes_flags_are_its_group_and_what_it_borrows():
    assert ZoomMode().flags == ("frames", "zoom", "rotate", "translate", "fps", "width", "height")
    assert ClipMode().flags == ("start", "end", "no_flow", "flow_blend", "occlusion_blend", "scene_cut",
                                "flow_refresh", "flow_method", "no_audio", "chunk_warmup")


def test_the_flag_that_chooses_a_mode_runs_it():
    parser = dream_video.build_parser()
    assert isinstance(choose(dream_video.MODES, parser.parse_args([])), ZoomMode)
    assert isinstance(choose(dream_video.MODES, parser.parse_args(["--video", "x.mp4"])), ClipMode)


def _argv(parser, dest: str) -> list[str]:
    action = next(a for a in parser._actions if a.dest == dest)
    values = [] if action.nargs == 0 else ["1"] * (action.nargs if isinstance(action.nargs, int) else 1)
    return [action.option_strings[0], *(values if action.choices is None else [action.choices[0]])]


@pytest.mark.parametrize("mode,other", [(m, o) for m in dream_video.MODES for o in dream_video.MODES if m is not o],
                         ids=lambda m: type(m).__name__)
def test_every_flag_of_another_mode_is_refused_before_any_work(mode, other):
    parser = dream_video.build_parser()
    chooser = ["--video", "clip.mp4"] if mode.chooser == "video" else []
    for dest in other.flags:
        flag = _argv(parser, dest)
        with pytest.raises(DreamError, match=f"^{flag[0]} is for {other.noun}; "):
            dream_video.main([*chooser, *flag])

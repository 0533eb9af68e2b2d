"""The commands on the gallery pages: written back from parsed flags, they parse to the same flags; an
atlas item's command renders that item (not a dream of noise) whatever the parameterisation."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from deepdream.atlas import AtlasSection
from deepdream.cli.args import command_line, still_parser
from deepdream.cli.pages import render_remake
from deepdream.cli.settings import is_render, render_settings
from deepdream.objectives import Objective, Term
from deepdream.visualise import RenderPlan


@pytest.mark.parametrize("argv", [
    ["--input", "my photo.jpg", "--model", "vgg16", "--layers", "relu4_2", "relu5_1", "--channels", "0-3", "9",
     "--no-smoothing", "--no-tile", "--max-memory", "6GB", "--lr", "0.05", "--seed", "7", "--output", "out/a b.png"],
    ["--class", "tiger cat", "--scale-range", "0.8", "1.2", "--no-robustness", "--decay-power", "1",
     "--param", "pixel", "--batch", "3", "--diversity", "50"],
    ["--lap-norm", "--tile-size", "512", "--decorrelate", "none", "--quiet"],
    [],
])
def test_a_written_command_parses_to_the_same_flags(argv):
    parser = still_parser()
    args = parser.parse_args(argv)
    words = shlex.split(command_line(parser, args, "dream.py"))
    assert words[:2] == ["python", "dream.py"]
    assert parser.parse_args(words[2:]) == args
    if "--output" in argv:
        assert words[-2:] == ["--output", "out/a b.png"]      # the output last


def test_changes_replace_and_drop_flags():
    parser = still_parser()
    args = parser.parse_args(["--atlas", "--class", "all", "--output", "atlas", "--quiet", "--steps", "9"])
    command = command_line(parser, args, "dream.py", atlas=None, quiet=None, class_=["3"], output="x.png", seed=11)
    assert parser.parse_args(shlex.split(command)[2:]) == parser.parse_args(
        ["--class", "3", "--steps", "9", "--seed", "11", "--output", "x.png"])


def _section() -> AtlasSection:
    plan = RenderPlan(Objective([Term("channel", "block3", None)]), [("block3:5", 5)], 0)
    return AtlasSection("block3", "block3", "channel", 40, plan, Path("atlas/block3"))


class _Model:
    name = "efficientnet_lite0"


@pytest.mark.parametrize("flags", [[], ["--param", "pixel"], ["--param", "pixel", "--no-robustness"],
                                   ["--param", "fft", "--pad", "4"]])
def test_a_channels_command_is_a_render_with_the_atlas_settings(flags):
    parser = still_parser()
    args = parser.parse_args(["--atlas", "--layers", "block3", "--output", "atlas", *flags])
    settings = render_settings(args)
    command = render_remake(args, _Model(), settings)(_section(), 0, 1234)
    again = parser.parse_args(shlex.split(command)[2:])
    assert is_render(again) and not again.atlas
    assert (again.layers, again.channels, again.seed, again.output) == (["block3"], ["5"], 1234, "block3_5.png")
    assert render_settings(again) == type(settings)(**{**settings.__dict__, "batch": 1, "seed": 1234})

"""The commands on the gallery pages: written back from parsed flags, they parse to the same flags; an
atlas image's command is a sweep of its batch, with the atlas's settings, whatever the parameterisation."""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from deepdream.cli.args import command_line, still_parser
from deepdream.cli.pages import index_ranges, render_remake
from deepdream.cli.settings import is_render, render_settings
from deepdream.objectives import Objective, Term
from deepdream.sweep import SweepSection
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


def _section(kind: str = "channel") -> SweepSection:
    if kind == "class":
        plan = RenderPlan(Objective([Term("class", "logits", None)]), [("tench", 0), ("goldfish", 1), ("shark", 2)], 0)
        return SweepSection(plan, Path("atlas/classes"), "classes", 1000)
    plan = RenderPlan(Objective([Term("channel", "block3", None)]), [(f"block3:{c}", c) for c in (3, 4, 5, 9)], 0)
    return SweepSection(plan, Path("atlas/block3"), "block3", 40)


class _Model:
    name = "efficientnet_lite0"


@pytest.mark.parametrize("flags", [[], ["--param", "pixel"], ["--param", "pixel", "--no-robustness"],
                                   ["--param", "fft", "--pad", "4"], ["--batch", "4"]])
def test_an_atlas_batchs_command_is_a_sweep_of_that_batch_with_the_atlas_settings(flags):
    parser = still_parser()
    args = parser.parse_args(["--atlas", "--layers", "block3", "block5", "--class", "all", "--output", "atlas", *flags])
    settings = render_settings(args)
    remake = render_remake(args, _Model(), settings)
    again = parser.parse_args(shlex.split(remake(_section(), [0, 1, 2, 3]))[2:])
    assert is_render(again) and again.sweep and not again.atlas and again.class_ is None
    assert (again.layers, again.channels, again.seed, again.output) == (["block3"], ["3-5", "9"], 0, "block3_3-9")
    assert render_settings(again) == replace(settings, seed=0)   # the same batch size, steps, size: the same bytes
    classes = parser.parse_args(shlex.split(remake(_section("class"), [1, 2]))[2:])
    assert (classes.class_, classes.layers, classes.channels, classes.output) == (["1", "2"], None, None, "classes_1-2")


def test_a_sweeps_command_keeps_the_rest_of_its_objective():
    """A class sweep with a layer term keeps the layer; only the swept flag names the batch."""
    parser = still_parser()
    args = parser.parse_args(["--sweep", "--class", "all", "--layers", "block5", "--seed", "4", "--output", "s"])
    again = parser.parse_args(shlex.split(render_remake(args, _Model(), render_settings(args))(
        _section("class"), [0]))[2:])
    assert (again.class_, again.layers, again.seed, again.output) == (["0"], ["block5"], 4, "classes_0")


def test_index_ranges():
    assert index_ranges([0, 1, 2, 3]) == ["0-3"] and index_ranges([3, 7, 8]) == ["3", "7-8"]
    assert index_ranges([5]) == ["5"]

"""Flags -> settings: every dream setting is its DreamSettings field plus its flag, and the rest is derived."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

import dream
import dream_video
from deepdream.cli import args as cli_args
from deepdream.cli.args import DreamArgumentParser, add_dream_arguments, flag_name, still_parser
from deepdream.cli.settings import (
    DREAM_ONLY,
    flag_settings,
    is_render,
    render_settings,
    settings_for_model,
    validate_args,
)
from deepdream.errors import DreamError
from deepdream.presets import PRESETS
from deepdream.settings import DreamSettings
from models import Recipe

SETTINGS = [f.name for f in fields(DreamSettings)]


def parse(*argv: str) -> argparse.Namespace:
    parser = DreamArgumentParser()
    add_dream_arguments(parser)
    return parser.parse_args(list(argv))


def test_settings_precedence(effnet):
    # the model's own recipe when nothing is said
    s = settings_for_model(parse(), effnet)
    assert s.layers == PRESETS["efficientnet_lite0"].layers and s.lr == PRESETS["efficientnet_lite0"].lr
    # explicit flags beat the preset, the rest comes from the preset
    s = settings_for_model(parse("--preset", "efficientnet_lite0", "--steps", "3", "--layers", "block7"), effnet)
    assert (s.steps, s.layers, s.lr, s.scale) == (3, ("block7",), 0.07, 1.5)
    # a preset for another architecture lends its numbers, not its layers
    notes = []
    s = settings_for_model(parse("--preset", "vgg16"), effnet, notes.append)
    assert (s.steps, s.lr, s.jitter, s.layers) == (24, 0.07, 36, ("block10",))
    assert notes and "vgg16" in notes[0]
    # a preset's decorrelation can be switched off
    assert settings_for_model(parse("--preset", "efficientnet_lite0_natural"), effnet).decorrelate == "imagenet"
    assert settings_for_model(parse("--preset", "efficientnet_lite0_natural", "--decorrelate", "none"),
                              effnet).decorrelate is None


@pytest.mark.parametrize("argv,message", [
    (["--steps", "0"], "--steps"), (["--octaves", "0"], "--octaves"), (["--scale", "-1"], "--scale"),
    (["--lr", "-0.1"], "--lr"), (["--jitter", "-2"], "--jitter"), (["--model", "nope"], "unknown model"),
    (["--preset", "nope"], "unknown preset"), (["--model", "all", "--layers", "x"], "--layers"),
])
def test_validate_args_rejects(argv, message):
    with pytest.raises(DreamError, match=message):
        validate_args(parse(*argv))


@pytest.mark.parametrize("build", [dream.build_parser, dream_video.build_parser], ids=["dream", "dream_video"])
def test_every_setting_has_a_flag_whose_dest_is_its_field(build):
    parser = build()
    flags = {f: [o for a in parser._actions if a.dest == f for o in a.option_strings] for f in SETTINGS}
    for name, options in flags.items():
        assert flag_name(name) in options, (name, options)


def test_flags_map_to_their_fields():
    """Each flag lands on the field of its name, converted where the flag's text is not the value."""
    args = parse("--layers", "block5", "block7", "--channels", "0-2", "--guide", "g.png", "--octaves", "3",
                 "--scale", "1.5", "--steps", "7", "--lr", "0.2", "--jitter", "4", "--smoothing", "0.3",
                 "--no-smoothing", "--lap-norm", "--grad-norm", "mean-abs", "--tile-size", "512",
                 "--max-memory", "2GB", "--seed", "9", "--decorrelate", "imagenet")
    given = flag_settings(args)
    assert sorted(given) == sorted(SETTINGS)   # this argv sets every field
    settings = DreamSettings(**given)
    assert settings == DreamSettings(layers=("block5", "block7"), channels=(0, 1, 2), guide="g.png", octaves=3,
                                     scale=1.5, steps=7, lr=0.2, jitter=4, smoothing=0.3, smooth=False,
                                     lap_norm=True, grad_norm="mean-abs", tile_size=512, max_memory=2 * 10**9,
                                     seed=9, decorrelate="imagenet")
    assert flag_settings(parse()) == {}
    assert flag_settings(parse("--no-tile")) == {"tile_size": 0}


def test_validate_args_checks_every_given_setting(monkeypatch):
    """A check added to DreamSettings.validate runs on the flags before any model loads."""
    original = DreamSettings.validate

    def validate(self):
        if self.seed == 7:
            raise DreamError("seven")
        original(self)

    monkeypatch.setattr(DreamSettings, "validate", validate)
    with pytest.raises(DreamError, match="seven"):
        validate_args(parse("--seed", "7"))
    validate_args(parse("--seed", "8"))


def test_help_defaults_come_from_dream_settings(monkeypatch):
    monkeypatch.setattr(cli_args, "DEFAULTS", DreamSettings(octaves=7))
    assert "(default from recipe, 7)" in " ".join(still_parser().format_help().split())


@pytest.mark.parametrize("setting", DREAM_ONLY)
def test_a_render_refuses_every_dream_only_setting_by_its_flag(setting):
    parser = still_parser()
    action = next(a for a in parser._actions if a.dest == setting)
    value = [] if action.nargs == 0 else ["1"] if action.choices is None else [action.choices[0]]
    args = parser.parse_args(["--class", "goldfish", flag_name(setting), *value])
    with pytest.raises(DreamError, match=f"^{flag_name(setting)} shapes a dream, not a render"):
        render_settings(args)


def test_every_render_flag_switches_to_a_render():
    parser = still_parser()
    assert not is_render(parser.parse_args([])) and not is_render(parser.parse_args(["--param", "pixel"]))
    for argv in (["--class", "x"], ["--neuron", "a:1"], ["--param", "fft"], ["--decay-power", "1"], ["--batch", "2"],
                 ["--diversity", "0"], ["--sweep"], ["--pad", "0"], ["--scale-range", "1", "2"],
                 ["--rotate-range", "3"], ["--no-robustness"]):
        assert is_render(parser.parse_args(argv)), argv


def test_recipes_name_dream_settings():
    """A recipe's values are its fields named like DreamSettings' (description aside)."""
    assert {f.name for f in fields(Recipe)} - {"description"} <= set(SETTINGS)
    natural = PRESETS["efficientnet_lite0_natural"]
    assert natural.values()["decorrelate"] == natural.decorrelate and "description" not in natural.values()

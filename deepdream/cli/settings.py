"""Parsed flags -> the settings of a dream (``DreamSettings``) or of a render from noise (``RenderSettings``).

A dream setting is a ``DreamSettings`` field plus its flag (``args``), whose dest is the field's
name; everything here is derived from ``dataclasses.fields(DreamSettings)``:

- ``flag_settings``: the settings the flags give, by field (the flag-to-field mapping);
- ``validate_args``: their checks (``DreamSettings.validate``) before any model loads;
- ``settings_for_model``: the precedence, flag > ``--preset`` > the video's per-frame defaults >
  the model's recipe > ``DreamSettings``' defaults;
- ``DREAM_ONLY``: the settings a render from noise refuses (all but ``RENDER_ACCEPTS``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import fields

from models import DreamModel

from ..errors import DreamError, Notify, make_notify
from ..loading import load_dream_model
from ..objectives import parse_channels
from ..presets import get_preset, recipe_for_model
from ..robustness import NONE as NO_ROBUSTNESS
from ..robustness import Robustness
from ..settings import DreamSettings
from ..sweep import SWEEP_BATCH
from ..visualise import RenderSettings
from .args import ATLAS_SIZE, RENDER_FLAGS, flag_name
from .model_choice import ALL_MODELS, check_model_name, is_all, model_name_from_args

SETTINGS = tuple(f.name for f in fields(DreamSettings))
#: The dream settings a render from noise takes too (its objective, steps, step size, jitter, seed,
#: colour space; ``--no-smoothing`` is accepted and changes nothing in a render).
RENDER_ACCEPTS = ("layers", "channels", "steps", "lr", "jitter", "seed", "decorrelate", "smooth")
#: Flags that shape a dream (photo, octaves, smoothed steps) and mean nothing to a render from noise.
DREAM_ONLY = tuple(name for name in SETTINGS if name not in RENDER_ACCEPTS) + ("preset", "max_size")


def dream_channels(specs: list[str] | None) -> tuple[int, ...] | None:
    if specs is None:
        return None
    channels = parse_channels(specs)
    if channels == "all":
        raise DreamError("--channels all renders every channel one by one: add --sweep --output FOLDER "
                         "(or drop --channels to dream on all channels at once)")
    return tuple(channels)


#: How a flag's value becomes its setting, where it is not the value itself.
FROM_FLAG: dict[str, Callable[[object], object]] = {"layers": tuple, "channels": dream_channels}


def given_flags(args: argparse.Namespace) -> dict[str, object]:
    """The dream settings' flags that were given, as parsed, by field name."""
    values = {name: getattr(args, name, None) for name in SETTINGS}
    return {name: value for name, value in values.items() if value is not None}


def flag_settings(args: argparse.Namespace) -> dict[str, object]:
    """The dream settings the flags give, by field name (the flag's dest is the field)."""
    return {name: FROM_FLAG[name](value) if name in FROM_FLAG else value for name, value in given_flags(args).items()}


def validate_args(args: argparse.Namespace) -> None:
    """Checks that need no model (so they fail before anything slow happens)."""
    if args.model is not None and args.model != ALL_MODELS:
        check_model_name(args.model)
    if args.preset is not None:
        get_preset(args.preset)
    if is_all(args):
        if args.weights is not None:
            raise DreamError("--model all dreams with each model's own weights; drop --weights or name one model")
        if args.layers is not None:
            raise DreamError("--layers names layers of one model; drop it with --model all (each model uses its recipe)")
    if args.channels is not None:
        parse_channels(args.channels)   # 'all' too: a --sweep takes it
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise DreamError(f"--seed must be between 0 and {2**32 - 1} (got {args.seed})")
    # The given values' own checks, with the generic defaults for whatever is not given.
    DreamSettings(**{k: v for k, v in given_flags(args).items() if k != "channels"}).validate()


def recipe_settings(args: argparse.Namespace, model: DreamModel, notify: Notify) -> dict[str, object]:
    """The settings of --preset, else of the model's own recipe (its layers only if it is this model's)."""
    preset = get_preset(args.preset) if args.preset is not None else recipe_for_model(model.name)
    if preset is None:
        return {}
    values = preset.values()
    if preset.model != model.name:
        del values["layers"]
        if args.layers is None:
            notify(f"preset '{args.preset}' is for {preset.model}; using its step settings with {model.name}'s "
                   f"default layers ({' '.join(model.default_layers)})")
    return values


def settings_for_model(args: argparse.Namespace, model: DreamModel, notify: Notify | None = None,
                       over_recipe: Mapping[str, object] | None = None) -> DreamSettings:
    """Resolve the settings for ``model``: explicit flags > --preset > ``over_recipe`` (the video's
    per-frame defaults) > the model's recipe > the generic defaults (``DreamSettings``'s own).

    The result is validated where it is used (``Dreamer``); the flags were by ``validate_args``.
    """
    notify = notify or make_notify(getattr(args, "quiet", False))
    values = recipe_settings(args, model, notify)
    if args.preset is None and over_recipe:
        values.update(over_recipe)
    values.update(flag_settings(args))
    values.setdefault("layers", tuple(model.default_layers))
    if str(values.get("decorrelate")).lower() == "none":  # lets a flag switch off a preset's decorrelation
        values["decorrelate"] = None
    settings = DreamSettings(**values)
    model.check_layers(settings.layers or model.default_layers)
    return settings


def model_and_settings(args: argparse.Namespace, notify: Notify | None = None,
                       over_recipe: Mapping[str, object] | None = None) -> tuple[DreamModel, DreamSettings]:
    """Parsed arguments (checked by ``validate_args``) -> the loaded model and its resolved
    ``DreamSettings`` (raises DreamError & co.)."""
    notify = notify or make_notify(getattr(args, "quiet", False))
    name = model_name_from_args(args)
    model = load_dream_model(name, args.weights)
    return model, settings_for_model(args, model, notify, over_recipe)


# -- renders from noise ------------------------------------------------------------------------------

def is_render(args: argparse.Namespace) -> bool:
    """A render from noise (feature visualisation) rather than a dream: any render flag switches it on,
    except ``--param pixel``, which is also the dream's own (today's) behaviour."""
    given = [name for name in RENDER_FLAGS if getattr(args, name) is not None and getattr(args, name) is not False]
    return any(name != "param" for name in given) or args.param == "fft"


def render_settings(args: argparse.Namespace) -> RenderSettings:
    """Explicit flags over ``RenderSettings``' defaults; raises DreamError for flags a render cannot use."""
    for key in DREAM_ONLY:
        if getattr(args, key, None) is not None:
            raise DreamError(f"{flag_name(key)} shapes a dream, not a render from noise; drop it (or the render flags)")
    if getattr(args, "input", None) is not None:
        raise DreamError("--class/--neuron/--sweep/--param fft render from noise; drop --input "
                         "(to dream on a photo use --layers/--channels)")
    d = RenderSettings()
    if args.no_robustness:
        if any(v is not None for v in (args.pad, args.scale_range, args.rotate_range, args.jitter)):
            raise DreamError("--no-robustness switches off --pad/--jitter/--scale-range/--rotate-range; drop one or the other")
        robust = NO_ROBUSTNESS
    else:
        r = d.robustness
        robust = Robustness(pad=_given(args.pad, r.pad), jitter=_given(args.jitter, r.jitter),
                            scale_range=tuple(args.scale_range) if args.scale_range else r.scale_range,
                            rotate=_given(args.rotate_range, r.rotate))
    many = "--atlas" if args.atlas else "--sweep" if args.sweep else None   # one render per item, into a folder
    if args.atlas and (args.sweep or args.neuron is not None):
        raise DreamError(f"--atlas renders every channel of --layers and every --class one by one; drop "
                         f"{'--sweep' if args.sweep else '--neuron'}")
    if args.class_ is not None and len(args.class_) > 1 and not many:
        raise DreamError(f"--class takes one class (got {len(args.class_)} words); quote a name with spaces, "
                         "e.g. --class 'tiger cat', or render several with --sweep or --atlas")
    if args.diversity and many:
        raise DreamError(f"--diversity renders several images of one objective; it does not combine with {many}")
    size = ATLAS_SIZE if args.atlas else None
    decorrelate = _given(args.decorrelate, d.decorrelate)
    settings = RenderSettings(
        param=_given(args.param, d.param), height=_given(args.height, size or d.height),
        width=_given(args.width, size or d.width),
        steps=_given(args.steps, d.steps), lr=_given(args.lr, d.lr), decay_power=_given(args.decay_power, d.decay_power),
        robustness=robust, batch=_given(args.batch, SWEEP_BATCH if many else d.batch),
        diversity=_given(args.diversity, d.diversity),
        decorrelate=None if str(decorrelate).lower() == "none" else decorrelate,
        seed=args.seed, save_every=args.save_every)
    settings.validate()
    if many and args.save_every is not None:
        raise DreamError(f"--save-every watches one long render; {many} writes each item as it finishes instead")
    return settings


def _given(value, default):
    return default if value is None else value

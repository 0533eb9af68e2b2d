"""Which model the flags name: ``--model``, else the ``--weights`` file's, else the preset's, else
the default (googlenet when its weights are present, else the model that works offline); and the
models ``--model all`` dreams with."""

from __future__ import annotations

import argparse

from models import MODELS, get_facts, list_models, weights_available
from models.registry import check_weights_file, weights_dir

from ..errors import DreamError, Notify, notify_after_success
from ..presets import get_preset

DEFAULT_MODEL = "googlenet"
OFFLINE_MODEL = "efficientnet_lite0"
ALL_MODELS = "all"


def is_all(args: argparse.Namespace) -> bool:
    return getattr(args, "model", None) == ALL_MODELS


def check_model_name(name: str) -> str:
    try:
        get_facts(name)
    except ValueError as exc:
        raise DreamError(f"{exc} (or '{ALL_MODELS}')") from None
    return name


def weights_architecture(path: str) -> str:
    """The architecture a weights file was made for (its metadata), or a clear error."""
    from models.weights import read_metadata

    check_weights_file(path)
    try:
        arch = read_metadata(path).get("architecture")
    except Exception as exc:  # numpy raises several types for a file that is not an .npz
        raise DreamError(f"cannot read weights file '{path}' ({type(exc).__name__}); "
                         "give a .npz written by an exporter or train_dream.py") from None
    if not arch:
        raise DreamError(f"'{path}' is not a DeepDream-MLX weights file (no metadata); convert it with an exporter")
    return str(arch)


def default_model_name(quiet: bool = False) -> str:
    """googlenet when its weights are present, else the model that works offline. Which one was used
    is said after a run that worked, once per weights folder (the output's name says it too)."""
    if weights_available(DEFAULT_MODEL):
        return DEFAULT_MODEL
    notify_after_success(f"googlenet weights not found, so this used {OFFLINE_MODEL} (works offline); for "
                         f"googlenet run `{MODELS[DEFAULT_MODEL].exporter}`",
                         once=f"default model {OFFLINE_MODEL}: no googlenet in {weights_dir().resolve()}", quiet=quiet)
    return OFFLINE_MODEL


def model_name_from_args(args: argparse.Namespace) -> str:
    """Which architecture the arguments ask for: --model, else the --weights file's, else the preset's, else default."""
    if args.model is not None:
        if args.model == ALL_MODELS:
            raise DreamError("--model all is not supported here; name one model")
        name = check_model_name(args.model)
        if args.weights is not None:
            arch = weights_architecture(args.weights)
            if arch != name:
                raise DreamError(f"'{args.weights}' holds {arch} weights, not {name}; use --model {arch} or drop --model")
        return name
    if args.weights is not None:
        return weights_architecture(args.weights)
    if args.preset is not None:
        return get_preset(args.preset).model
    return default_model_name(getattr(args, "quiet", False))


def available_models(notify: Notify) -> list[str]:
    """For --model all: the models whose weights are present; a notice names the exporter for each other one."""
    names = []
    for name in list_models():
        if weights_available(name):
            names.append(name)
        else:
            notify(f"skipping {name}: no weights (run `{MODELS[name].exporter}`)")
    return names

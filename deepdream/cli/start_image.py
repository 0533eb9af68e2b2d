"""The image a dream starts from: ``--input`` (within ``--max-size``), or noise of ``--width`` x ``--height``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import DreamError
from ..image_io import limit_size, load_image, noise_image
from .args import STILL_SIZE


def check_image_args(args: argparse.Namespace, noun: str) -> None:
    """The size flags' checks (no model needed, so a typo fails at once)."""
    if args.input is not None and (args.width is not None or args.height is not None):
        raise DreamError(f"--width/--height size the noise {noun}; with --input use --max-size to resize it")
    for flag, value in (("--width", args.width), ("--height", args.height), ("--max-size", args.max_size)):
        if value is not None and value < 1:
            raise DreamError(f"{flag} must be a positive number of pixels (got {value})")


def noise_size(args: argparse.Namespace, default_size: int) -> tuple[int, int]:
    """(width, height) of the noise start: --width x --height, ``default_size`` where not given."""
    return (args.width if args.width is not None else default_size,
            args.height if args.height is not None else default_size)


def noise_start(size: tuple[int, int], rng: np.random.Generator, max_size: int | None) -> np.ndarray:
    """The noise start image of ``size`` (width, height), drawn from ``rng``, within ``max_size`` (--max-size)."""
    width, height = size
    image = noise_image(height, width, rng)
    return limit_size(image, max_size) if max_size is not None else image


def still_start(args: argparse.Namespace, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """The start image of dream.py's flags for one input (as ``batch.DreamJob`` makes it) and the stem of
    its output names: the one --input (within --max-size), else noise drawn from ``rng``."""
    if args.input:
        (path,) = args.input
        return load_image(path, max_size=args.max_size), Path(path).stem
    return noise_start(noise_size(args, STILL_SIZE), rng, args.max_size), "dream"

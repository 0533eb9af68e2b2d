#!/usr/bin/env python
"""DeepDream an image (or noise) with an MLX model.

    python dream.py --input assets/chelsea.png
    python dream.py --input photo.jpg --model vgg16 --layers relu4_2 --steps 30
    python dream.py --input photo.jpg --model all --output outputs/all/
    python dream.py --info

See README (``python dream.py --help`` lists every flag).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402,F401  (fast BLAS before anything imports mlx)

from deepdream.cli import (  # noqa: E402
    ALL_MODELS,
    OUTPUT_FOLDER,
    available_models,
    check_image_args,
    handle_info_flags,
    load_dream_model,
    make_notify,
    model_and_settings,
    run_main,
    settings_for_model,
    still_parser,
    still_start,
    validate_args,
)
from deepdream.contact_sheet import contact_sheet  # noqa: E402
from deepdream.errors import DreamError  # noqa: E402
from deepdream.image_io import (  # noqa: E402
    check_output_path,
    check_writable_folder,
    default_output_path,
    save_image,
)
from deepdream.render import Dreamer  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    return still_parser()


def dream_one(args: argparse.Namespace, notify) -> int:
    import numpy as np

    output = Path(args.output) if args.output else None
    if output is not None:
        check_output_path(output, args.input)  # before the slow part, so a typo costs nothing
    rng = np.random.default_rng(args.seed)  # one generator: the noise image, then the jitter
    image, _ = still_start(args, rng)
    model, settings = model_and_settings(args, notify)
    if output is None:
        name = Path(args.weights).stem if args.weights else model.name
        output = check_output_path(default_output_path(args.input, name, OUTPUT_FOLDER), args.input)
    dreamer = Dreamer(model, settings, quiet=args.quiet, notify=notify)
    result = dreamer(image, rng=rng)
    save_image(output, result)
    if not args.quiet:
        print(output)
    return 0


def dream_all(args: argparse.Namespace, notify) -> int:
    """--model all: one dream per model with weights, each with its recipe, plus a labelled contact sheet."""
    import numpy as np

    folder = Path(args.output) if args.output else Path(OUTPUT_FOLDER)
    if folder.exists() and not folder.is_dir():
        raise DreamError(f"with --model all, --output names a folder, but '{folder}' is a file")
    if folder.suffix.lower() in (".png", ".jpg", ".jpeg") and not folder.exists():
        raise DreamError(f"with --model all, --output names a folder (got '{folder}'); e.g. --output outputs/all")
    check_writable_folder(folder)
    names = available_models(notify)
    if not names:
        raise DreamError("no model has weights; run `python export_efficientnet_lite0.py` or another exporter")
    seed = args.seed
    first_rng = np.random.default_rng(seed)
    image, stem = still_start(args, first_rng)
    # Validate everything (weights, layers, channels, guide) before the first long dream.
    jobs = []
    for name in names:
        model = load_dream_model(name)
        settings = settings_for_model(args, model, notify)
        jobs.append((name, Dreamer(model, settings, quiet=args.quiet, notify=notify)))
    ext = Path(default_output_path(args.input, "x")).suffix
    results = []
    for name, dreamer in jobs:
        result = dreamer(image, rng=np.random.default_rng(seed), description=name)
        path = save_image(folder / f"{stem}_{name}{ext}", result)
        results.append((name, result))
        if not args.quiet:
            print(path)
    sheet = contact_sheet([("input", image)] + results)
    sheet_path = folder / f"{stem}_contact_sheet.png"
    save_image(sheet_path, np.asarray(sheet, dtype=np.float32) / 255.0)
    if not args.quiet:
        print(sheet_path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    notify = make_notify(args.quiet)
    if handle_info_flags(args):
        return 0
    check_image_args(args, "image")
    validate_args(args)
    if args.model == ALL_MODELS:
        return dream_all(args, notify)
    return dream_one(args, notify)


if __name__ == "__main__":
    run_main(main)

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
    DreamArgumentParser,
    add_dream_arguments,
    available_models,
    handle_info_flags,
    load_dream_model,
    make_notify,
    model_and_settings,
    run_main,
    settings_for_model,
    validate_args,
)
from deepdream.contact_sheet import contact_sheet  # noqa: E402
from deepdream.errors import DreamError  # noqa: E402
from deepdream.image_io import (  # noqa: E402
    check_output_path,
    check_writable_folder,
    default_output_path,
    load_image,
    noise_image,
    save_image,
)
from deepdream.render import Dreamer  # noqa: E402

DEFAULT_SIZE = 512
OUTPUT_FOLDER = "outputs"


def build_parser() -> argparse.ArgumentParser:
    parser = DreamArgumentParser(
        description="DeepDream an image with an MLX model. Without --input, dreams from noise.",
        epilog="Example: python dream.py --input assets/chelsea.png --preset efficientnet_lite0 --steps 30",
    )
    g = parser.add_argument_group("input and output")
    g.add_argument("--input", metavar="PATH", help="image to dream on (any format Pillow reads); omit to dream from noise")
    g.add_argument("--output", metavar="PATH",
                   help="output image (default outputs/<input-stem>_<model>.<ext>); a folder with --model all")
    g.add_argument("--width", type=int, metavar="PX", help=f"noise image width (default {DEFAULT_SIZE}; no --input only)")
    g.add_argument("--height", type=int, metavar="PX", help=f"noise image height (default {DEFAULT_SIZE})")
    g.add_argument("--max-size", type=int, metavar="PX", help="downscale the input so its longest side is at most PX")
    add_dream_arguments(parser)
    return parser


def start_image(args: argparse.Namespace, rng) -> tuple[object, str]:
    """The image to dream on and the stem used in output names."""
    if args.input is not None:
        return load_image(args.input, max_size=args.max_size), Path(args.input).stem
    width = args.width if args.width is not None else DEFAULT_SIZE
    height = args.height if args.height is not None else DEFAULT_SIZE
    image = noise_image(height, width, rng)
    if args.max_size is not None:
        from deepdream.image_io import limit_size

        image = limit_size(image, args.max_size)
    return image, "dream"


def check_io_args(args: argparse.Namespace) -> None:
    if args.input is not None and (args.width is not None or args.height is not None):
        raise DreamError("--width/--height size the noise image; with --input use --max-size to resize it")
    for flag, value in (("--width", args.width), ("--height", args.height), ("--max-size", args.max_size)):
        if value is not None and value < 1:
            raise DreamError(f"{flag} must be a positive number of pixels (got {value})")


def dream_one(args: argparse.Namespace, notify) -> int:
    import numpy as np

    output = Path(args.output) if args.output else None
    if output is not None:
        check_output_path(output, args.input)  # before the slow part, so a typo costs nothing
    rng = np.random.default_rng(args.seed)  # one generator: the noise image, then the jitter
    image, _ = start_image(args, rng)
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
    image, stem = start_image(args, first_rng)
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
    check_io_args(args)
    validate_args(args)
    if args.model == ALL_MODELS:
        return dream_all(args, notify)
    return dream_one(args, notify)


if __name__ == "__main__":
    run_main(main)

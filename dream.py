#!/usr/bin/env python
"""DeepDream an image (or noise) with an MLX model.

    python dream.py --input assets/chelsea.png
    python dream.py --input photo.jpg --model vgg16 --layers relu4_2 --steps 30
    python dream.py --input photo.jpg --model all --output outputs/all/
    python dream.py --class goldfish --output goldfish.png
    python dream.py --layers block5 --channels 0-63 --sweep --output outputs/block5/
    python dream.py --info

See README (``python dream.py --help`` lists every flag).
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402,F401  (fast BLAS before anything imports mlx)

from deepdream.cli.args import OUTPUT_FOLDER, still_parser  # noqa: E402
from deepdream.cli.info import handle_info_flags  # noqa: E402
from deepdream.cli.model_choice import ALL_MODELS, available_models, model_name_from_args  # noqa: E402
from deepdream.cli.pages import Dream, DreamRow, dream_command, run_atlas, write_dreams_page, write_sweep_page  # noqa: E402
from deepdream.cli.settings import (  # noqa: E402
    is_render,
    model_and_settings,
    render_settings,
    settings_for_model,
    validate_args,
)
from deepdream.cli.start_image import check_image_args, still_start  # noqa: E402
from deepdream.contact_sheet import contact_sheet  # noqa: E402
from deepdream.errors import DreamError, Interrupted, make_notify, run_main  # noqa: E402
from deepdream.image_io import (  # noqa: E402
    check_output_path,
    check_writable_folder,
    default_output_path,
    save_image,
)
from deepdream.objectives import parse_channels  # noqa: E402
from deepdream.dreamer import Dreamer  # noqa: E402
from deepdream.loading import load_dream_model  # noqa: E402
from deepdream.sweep import check_sweep_folder, run_sweep  # noqa: E402
from deepdream.visualise import Renderer, plan_render, tile_targets  # noqa: E402


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
    snapshots: list[Path] = []
    try:
        result = dreamer(image, rng=rng, snapshot=lambda rgb: snapshots.append(save_image(output, rgb)),
                         save_every=args.save_every)
    except KeyboardInterrupt:
        if snapshots:
            raise Interrupted(f"stopped; the last snapshot is in {output}") from None
        raise
    save_image(output, result)
    if not args.quiet:
        print(output)
    return 0


def dream_all(args: argparse.Namespace, notify) -> int:
    """--model all: one dream per model with weights, each with its recipe, plus a labelled contact sheet."""
    import numpy as np

    if args.save_every is not None:
        raise DreamError("--save-every watches one dream; name one model instead of --model all")
    folder = Path(args.output) if args.output else Path(OUTPUT_FOLDER)
    if folder.exists() and not folder.is_dir():
        raise DreamError(f"with --model all, --output names a folder, but '{folder}' is a file")
    if folder.suffix.lower() in (".png", ".jpg", ".jpeg") and not folder.exists():
        raise DreamError(f"with --model all, --output names a folder (got '{folder}'); e.g. --output outputs/all")
    check_writable_folder(folder)
    names = available_models(notify)
    if not names:
        raise DreamError("no model has weights; run `python export_efficientnet_lite0.py` or another exporter")
    # A seed even without --seed: the gallery page's command for each dream names it.
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    image, stem = still_start(args, np.random.default_rng(seed))
    # Validate everything (weights, layers, channels, guide) before the first long dream.
    jobs = []
    for name in names:
        model = load_dream_model(name)
        settings = settings_for_model(args, model, notify)
        jobs.append((name, Dreamer(model, settings, quiet=args.quiet, notify=notify)))
    ext = Path(default_output_path(args.input, "x")).suffix
    results = []
    dreams = []
    for name, dreamer in jobs:
        rng = np.random.default_rng(seed)
        start, _ = still_start(args, rng)  # drawn as `--model NAME --seed S` draws it, so that command remakes it
        result = dreamer(start, rng=rng, description=name)
        path = save_image(folder / f"{stem}_{name}{ext}", result)
        results.append((name, result))
        dreams.append(Dream(name, path, dreamer.settings, dream_command(args, model=name, seed=seed, output=str(path))))
        if not args.quiet:
            print(path)
    sheet = contact_sheet([("input", image)] + results)
    sheet_path = folder / f"{stem}_contact_sheet.png"
    save_image(sheet_path, np.asarray(sheet, dtype=np.float32) / 255.0)
    page = write_dreams_page(folder, [DreamRow(Path(args.input) if args.input else None, tuple(dreams))],
                             title=f"{stem}: every model's dream", command=dream_command(args, seed=seed))
    if not args.quiet:
        print(sheet_path)
        print(page)
    return 0


def render(args: argparse.Namespace, notify) -> int:
    """Feature visualisation: a class, channel or neuron rendered from noise (one image, a batch, or a sweep)."""
    import numpy as np

    settings = render_settings(args)
    if args.class_ is not None and len(args.class_) > 1 and not args.atlas:
        raise DreamError(f"--class takes one class (got {len(args.class_)} words); quote a name with spaces, "
                         "e.g. --class 'tiger cat', or render several with --atlas")
    folder = check_sweep_folder(args.output, "--atlas" if args.atlas else "--sweep") if args.sweep or args.atlas \
        else None
    if folder is None and args.output is not None:
        check_output_path(args.output)
    if args.model == ALL_MODELS:
        raise DreamError("--model all dreams with each model's recipe; renders take one model: name it with --model")
    model = load_dream_model(model_name_from_args(args, notify), args.weights)
    if args.atlas:
        page = run_atlas(args, model, settings, folder, notify)
        if not args.quiet:
            print(page)
        return 0
    plan = plan_render(model, class_spec=args.class_[0] if args.class_ else None, neuron=args.neuron,
                       layers=args.layers, channels=parse_channels(args.channels) if args.channels else None,
                       sweep=args.sweep, diversity=settings.diversity)
    renderer = Renderer(model, plan.objective, settings)
    if folder is not None:
        written = run_sweep(renderer, plan, folder, settings.batch, args.seed, quiet=args.quiet)
        page = write_sweep_page(args, model, settings, plan, folder)
        if not args.quiet:
            print("\n".join(str(p) for p in written + [page]))
        return 0
    name = Path(args.weights).stem if args.weights else model.name
    output = Path(args.output) if args.output else default_output_path(None, name, OUTPUT_FOLDER).with_stem(
        f"{plan.label}_{name}")
    outputs = [output] if settings.batch == 1 else [output.with_stem(f"{output.stem}_{i + 1}")
                                                     for i in range(settings.batch)]
    for path in outputs:
        check_output_path(path)

    def save_all(images) -> None:
        for path, image in zip(outputs, images):
            save_image(path, image)

    snapshots: list[int] = []

    def snapshot(images) -> None:
        save_all(images)
        snapshots.append(len(images))

    objective = tile_targets(plan.objective, settings.batch)
    try:
        images = renderer.render(settings.batch, objective.targets(), np.random.default_rng(args.seed),
                                 snapshot=snapshot, progress=not args.quiet, description=plan.label)
    except KeyboardInterrupt:
        if snapshots:
            raise Interrupted(f"stopped; the last snapshot is in {outputs[0]}") from None
        raise
    save_all(images)
    if not args.quiet:
        print("\n".join(str(p) for p in outputs))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    notify = make_notify(args.quiet)
    if handle_info_flags(args):
        return 0
    check_image_args(args, "image")
    validate_args(args)
    if is_render(args):
        return render(args, notify)
    if args.model == ALL_MODELS:
        return dream_all(args, notify)
    return dream_one(args, notify)


if __name__ == "__main__":
    run_main(main)

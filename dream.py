#!/usr/bin/env python
"""DeepDream an image (or noise) with an MLX model.

    python dream.py --input assets/chelsea.png
    python dream.py --input photo.jpg --model vgg16 --layers relu4_2 --steps 30
    python dream.py --input photo.jpg --model all --output outputs/all/
    python dream.py --input photos/ --output outputs/holiday/      # a folder (or files, or a quoted glob)
    mlx.launch -n 4 --hostfile hosts.json -- python dream.py --input photos/ --output outputs/holiday/
    python dream.py --class goldfish --output goldfish.png
    python dream.py --layers block5 --channels 0-63 --sweep --output outputs/block5/
    python dream.py --atlas --model efficientnet_lite0 --class all --output outputs/atlas/
    python dream.py --info

See README (``python dream.py --help`` lists every flag).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402,F401  (fast BLAS before anything imports mlx)

from deepdream import distributed as dist  # noqa: E402
from deepdream.atlas import AtlasJob, plan_atlas, section_of  # noqa: E402
from deepdream.batch import DreamJob  # noqa: E402
from deepdream.cli.args import OUTPUT_FOLDER, still_parser  # noqa: E402
from deepdream.cli.info import handle_info_flags  # noqa: E402
from deepdream.cli.model_choice import ALL_MODELS, model_name_from_args  # noqa: E402
from deepdream.cli.pages import page_writer  # noqa: E402
from deepdream.cli.settings import is_render, render_settings, validate_args  # noqa: E402
from deepdream.cli.start_image import check_image_args  # noqa: E402
from deepdream.errors import DreamError, make_notify, run_main  # noqa: E402
from deepdream.jobs import Job, run_job  # noqa: E402
from deepdream.loading import load_dream_model  # noqa: E402
from deepdream.objectives import parse_channels  # noqa: E402
from deepdream.outputs import dream_name  # noqa: E402
from deepdream.sweep import SingleRenderJob, SweepJob, check_sweep_folder  # noqa: E402
from deepdream.visualise import Renderer, plan_render  # noqa: E402

#: The last word when a rank fails mid-job (finished outputs are kept and skipped by a rerun).
RESUME_HINT = "run the same command to make what is missing"


def build_parser() -> argparse.ArgumentParser:
    return still_parser()


def render_job(args: argparse.Namespace, notify) -> Job:
    """Feature visualisation: a class, channel or neuron rendered from noise (one image, a batch, a sweep
    or an atlas)."""
    settings = render_settings(args)
    folder = check_sweep_folder(args.output, "--atlas" if args.atlas else "--sweep") if args.sweep or args.atlas \
        else None
    if args.model == ALL_MODELS:
        raise DreamError("--model all dreams with each model's recipe; renders take one model: name it with --model")
    name = model_name_from_args(args)
    channels = parse_channels(args.channels) if args.channels else None
    common = {"weights": args.weights, "seed": args.seed, "overwrite": args.overwrite}
    if folder is not None and args.atlas:
        def atlas():
            model = load_dream_model(name, args.weights)
            sections = plan_atlas(model, folder, layers=args.layers, channels=channels, classes=args.class_,
                                  notify=notify)
            return model, settings, sections
        return AtlasJob(atlas, folder, settings.batch, **common)

    def plan_of(model):
        return plan_render(model, class_spec=args.class_, neuron=args.neuron, layers=args.layers, channels=channels,
                           sweep=args.sweep, diversity=settings.diversity)

    if folder is not None:
        def sweep():
            model = load_dream_model(name, args.weights)
            return model, settings, [section_of(model, plan_of(model), folder)]
        return SweepJob(sweep, settings.batch, **common)

    def setup():
        model = load_dream_model(name, args.weights)
        made = plan_of(model)
        return Renderer(model, made.objective, settings), made

    label = Path(args.weights).stem if args.weights else name
    return SingleRenderJob(setup, Path(args.output) if args.output else None,
                           lambda plan: Path(OUTPUT_FOLDER) / f"{dream_name(plan.label, label, None, name)}.png",
                           weights=args.weights, seed=args.seed, overwrite=args.overwrite)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    notify = dist.main_only(make_notify(args.quiet))
    with dist.session(RESUME_HINT):
        if handle_info_flags(args):
            return 0
        check_image_args(args, "image")
        validate_args(args)
        job = render_job(args, notify) if is_render(args) else DreamJob(args, notify)
        run_job(job, quiet=args.quiet, notify=notify, finished=page_writer(args, job))
    return 0


if __name__ == "__main__":
    run_main(main)

#!/usr/bin/env python
"""A DeepDream zoom video: dream a frame, zoom into its centre, dream again (the 2015 feedback loop).

    python dream_video.py --input assets/chelsea.png --frames 48 --output outputs/chelsea.mp4
    python dream_video.py --frames 120 --zoom 1.03 --rotate 0.5 --output outputs/noise.gif
    python dream_video.py ... --frames 240       # same command with more frames: continues the video

Every dream flag of dream.py works here (one shared definition, deepdream/cli.py). Frames are
saved as they finish in <output>_frames/; re-running the same command continues after the
last one, and Ctrl-C keeps every finished frame. See README.md, "Zoom videos".
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402,F401  (fast BLAS before anything imports mlx)

from deepdream.cli import (  # noqa: E402
    ALL_MODELS,
    OUTPUT_FOLDER,
    DreamArgumentParser,
    add_dream_arguments,
    add_image_arguments,
    check_image_args,
    handle_info_flags,
    input_image,
    make_notify,
    model_and_settings,
    noise_start,
    number,
    run_main,
    validate_args,
    whole_number,
)
from deepdream.errors import DreamError  # noqa: E402
from deepdream.render import Dreamer  # noqa: E402
from deepdream.video import (  # noqa: E402
    FRAME_DEFAULTS,
    VIDEO_FORMATS,
    Motion,
    check_resumable,
    check_video_output,
    file_sha256,
    frames_folder_for,
    make_video,
    resume_point,
    run_record,
)

DEFAULT_FRAMES = 48
DEFAULT_FPS = 12.0
DEFAULT_ZOOM = 1.05
#: Frame size: every frame is a dream, so videos default to smaller images than dream.py.
DEFAULT_SIZE = 256
DEFAULT_MAX_SIZE = 512


def build_parser() -> argparse.ArgumentParser:
    formats = ", ".join(VIDEO_FORMATS)
    parser = DreamArgumentParser(
        description="DeepDream zoom video: dream a frame, zoom into its centre (optionally rotate, translate, "
                    "blend), dream again. Without --input, starts from noise. Re-run the same command to continue "
                    "an interrupted video or to extend it with a larger --frames.",
        epilog=f"Each frame is a short dream: --octaves {FRAME_DEFAULTS['octaves']} --steps {FRAME_DEFAULTS['steps']} "
               "unless --preset or those flags are given (the model's other recipe values apply). "
               "Example: python dream_video.py --input assets/chelsea.png --frames 48 --output outputs/chelsea.mp4",
    )
    add_image_arguments(parser, noun="frame", default_size=DEFAULT_SIZE, default_max_size=DEFAULT_MAX_SIZE,
                        output_help=f"the video: {formats} (default {OUTPUT_FOLDER}/<input-stem>_<model>.mp4); "
                                    "frames go to <output-stem>_frames/ beside it")

    g = parser.add_argument_group("video")
    g.add_argument("--frames", type=whole_number, default=DEFAULT_FRAMES, metavar="N",
                   help=f"number of frames (default {DEFAULT_FRAMES}); raise it on a re-run to extend the video")
    g.add_argument("--zoom", type=number, default=DEFAULT_ZOOM, metavar="S",
                   help=f"scale per frame around the centre (default {DEFAULT_ZOOM}; 1 = no zoom, below 1 zooms out)")
    g.add_argument("--rotate", type=number, default=0.0, metavar="DEG",
                   help="rotation per frame in degrees, counter-clockwise (default 0)")
    g.add_argument("--translate", type=number, nargs=2, default=(0.0, 0.0), metavar=("DX", "DY"),
                   help="shift per frame in pixels, right and down (default 0 0)")
    g.add_argument("--blend", type=number, default=0.0, metavar="B",
                   help="share of the previous frame kept: next = B * moved + (1 - B) * dream(moved), where moved is "
                        "the previous frame zoomed/rotated/translated (default 0: full dream every frame; 0.5-0.8 "
                        "grows the dream more slowly, with less flicker)")
    g.add_argument("--fps", type=number, default=DEFAULT_FPS, metavar="N",
                   help=f"frames per second of the video (default {DEFAULT_FPS:g})")
    g.add_argument("--restart", action="store_true",
                   help="delete the frames of an earlier run in the frames folder and start over")
    add_dream_arguments(parser)
    return parser


def check_video_args(args: argparse.Namespace) -> Motion:
    """The checks that need no model, so a typo fails at once."""
    if args.model == ALL_MODELS:
        raise DreamError("--model all is not supported for videos; name one model")
    check_image_args(args, "frames")
    if args.frames < 1:
        raise DreamError(f"--frames must be at least 1 (got {args.frames})")
    if not (math.isfinite(args.fps) and args.fps > 0):
        raise DreamError(f"--fps must be a positive number (got {args.fps:g}); 12-30 is typical")
    motion = Motion(zoom=args.zoom, rotate=args.rotate, translate=(args.translate[0], args.translate[1]),
                    blend=args.blend)
    motion.validate()
    return motion


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    args = build_parser().parse_args(argv)
    notify = make_notify(args.quiet)
    if handle_info_flags(args):
        return 0
    motion = check_video_args(args)
    validate_args(args)
    output = Path(args.output) if args.output else None
    if output is not None:
        check_video_output(output, args.input)  # before the slow part, so a typo costs nothing
    # The input is read before the model loads, so a wrong path fails at once.
    start = input_image(args, DEFAULT_MAX_SIZE)
    model, settings = model_and_settings(args, notify, over_recipe=FRAME_DEFAULTS)
    name = Path(args.weights).stem if args.weights else model.name
    if output is None:
        stem = Path(args.input).stem if args.input else "dream"
        output = check_video_output(Path(OUTPUT_FOLDER) / f"{stem}_{name}.mp4", args.input)
    folder = frames_folder_for(output)
    resume = resume_point(folder, args.seed, restart=args.restart)
    settings = replace(settings, seed=resume.seed)

    if start is not None:
        source: dict[str, object] = {"input_sha256": file_sha256(args.input)}
    else:
        start = noise_start(args, np.random.default_rng(resume.seed), DEFAULT_SIZE)
        source = {"noise": [args.width or DEFAULT_SIZE, args.height or DEFAULT_SIZE]}
    size = (start.shape[1], start.shape[0])
    weights = str(Path(args.weights).resolve()) if args.weights else None
    record = run_record(model=model.name, weights=weights, source=source, size=size,
                        dream=settings.as_dict(), motion=motion)
    check_resumable(folder, resume.stored, record, resume.done)

    dreamer = Dreamer(model, settings, quiet=args.quiet, notify=notify)
    dreamer.octave_sizes(start.shape[0], start.shape[1])  # too small for the model: fail before writing

    def dream(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return dreamer(image, rng=rng, progress=False)

    make_video(folder, output, start, dream, motion, record=record, resume=resume, total=args.frames,
               fps=args.fps, restart=args.restart, quiet=args.quiet, notify=notify)
    if not args.quiet:
        print(output)
    return 0


if __name__ == "__main__":
    run_main(main)

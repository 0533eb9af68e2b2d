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
    EXIT_INTERRUPTED,
    DreamArgumentParser,
    add_dream_arguments,
    handle_info_flags,
    make_notify,
    model_and_settings,
    run_main,
    validate_args,
)
from deepdream.errors import DreamError  # noqa: E402
from deepdream.image_io import limit_size, load_image, noise_image  # noqa: E402
from deepdream.render import Dreamer  # noqa: E402
from deepdream.video import (  # noqa: E402
    FRAME_DEFAULTS,
    VIDEO_FORMATS,
    Motion,
    check_resumable,
    check_video_output,
    clear_frames,
    count_frames,
    encode_video,
    file_sha256,
    frame_path,
    frames_folder_for,
    new_seed,
    read_record,
    render_frames,
    run_record,
    write_record,
)

DEFAULT_FRAMES = 48
DEFAULT_FPS = 12.0
DEFAULT_ZOOM = 1.05
#: Frame size: every frame is a dream, so videos default to smaller images than dream.py.
DEFAULT_SIZE = 256
DEFAULT_MAX_SIZE = 512
OUTPUT_FOLDER = "outputs"


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None


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
    g = parser.add_argument_group("input and output")
    g.add_argument("--input", metavar="PATH", help="start image (any format Pillow reads); omit to start from noise")
    g.add_argument("--output", metavar="PATH",
                   help=f"the video: {formats} (default {OUTPUT_FOLDER}/<input-stem>_<model>.mp4); frames go to "
                        "<output-stem>_frames/ beside it")
    g.add_argument("--width", type=_int, metavar="PX", help=f"noise frame width (default {DEFAULT_SIZE}; no --input only)")
    g.add_argument("--height", type=_int, metavar="PX", help=f"noise frame height (default {DEFAULT_SIZE})")
    g.add_argument("--max-size", type=_int, metavar="PX",
                   help=f"downscale the input so its longest side is at most PX (default {DEFAULT_MAX_SIZE}: every "
                        "frame is a dream)")

    g = parser.add_argument_group("video")
    g.add_argument("--frames", type=_int, default=DEFAULT_FRAMES, metavar="N",
                   help=f"number of frames (default {DEFAULT_FRAMES}); raise it on a re-run to extend the video")
    g.add_argument("--zoom", type=_number, default=DEFAULT_ZOOM, metavar="S",
                   help=f"scale per frame around the centre (default {DEFAULT_ZOOM}; 1 = no zoom, below 1 zooms out)")
    g.add_argument("--rotate", type=_number, default=0.0, metavar="DEG",
                   help="rotation per frame in degrees, counter-clockwise (default 0)")
    g.add_argument("--translate", type=_number, nargs=2, default=(0.0, 0.0), metavar=("DX", "DY"),
                   help="shift per frame in pixels, right and down (default 0 0)")
    g.add_argument("--blend", type=_number, default=0.0, metavar="B",
                   help="share of the previous frame kept: next = B * moved + (1 - B) * dream(moved), where moved is "
                        "the previous frame zoomed/rotated/translated (default 0: full dream every frame; 0.5-0.8 "
                        "grows the dream more slowly, with less flicker)")
    g.add_argument("--fps", type=_number, default=DEFAULT_FPS, metavar="N",
                   help=f"frames per second of the video (default {DEFAULT_FPS:g})")
    g.add_argument("--restart", action="store_true",
                   help="delete the frames of an earlier run in the frames folder and start over")
    add_dream_arguments(parser)
    return parser


def check_video_args(args: argparse.Namespace) -> Motion:
    """The checks that need no model, so a typo fails at once."""
    if args.model == ALL_MODELS:
        raise DreamError("--model all is not supported for videos; name one model")
    if args.input is not None and (args.width is not None or args.height is not None):
        raise DreamError("--width/--height size the noise frames; with --input use --max-size to resize it")
    for flag, value in (("--width", args.width), ("--height", args.height), ("--max-size", args.max_size)):
        if value is not None and value < 1:
            raise DreamError(f"{flag} must be a positive number of pixels (got {value})")
    if args.frames < 1:
        raise DreamError(f"--frames must be at least 1 (got {args.frames})")
    if not (math.isfinite(args.fps) and args.fps > 0):
        raise DreamError(f"--fps must be a positive number (got {args.fps:g}); 12-30 is typical")
    motion = Motion(zoom=args.zoom, rotate=args.rotate, translate=(args.translate[0], args.translate[1]),
                    blend=args.blend)
    motion.validate()
    return motion


def apply_frame_defaults(args: argparse.Namespace) -> None:
    """Per-frame defaults (fewer octaves and steps than a still image) that act like explicit flags
    over the model's own recipe, but give way to --preset and to flags given on the command line."""
    if args.preset is not None:
        return
    for name, value in FRAME_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


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
    start = load_image(args.input, max_size=args.max_size or DEFAULT_MAX_SIZE) if args.input is not None else None
    apply_frame_defaults(args)
    model, settings = model_and_settings(args, notify)
    name = Path(args.weights).stem if args.weights else model.name
    if output is None:
        stem = Path(args.input).stem if args.input else "dream"
        output = check_video_output(Path(OUTPUT_FOLDER) / f"{stem}_{name}.mp4", args.input)
    folder = frames_folder_for(output)

    # --restart ignores the frames there (they are deleted only once everything has been checked).
    stored = None if args.restart else read_record(folder)
    done = 0 if args.restart else count_frames(folder)
    # Without --seed, a new video gets a random seed and a continued one keeps its own.
    seed = args.seed
    if seed is None:
        stored_seed = stored.get("dream", {}).get("seed") if stored and done else None
        seed = stored_seed if isinstance(stored_seed, int) else new_seed()
    settings = replace(settings, seed=seed)

    if start is not None:
        source: dict[str, object] = {"input_sha256": file_sha256(args.input)}
    else:
        width = args.width or DEFAULT_SIZE
        height = args.height or DEFAULT_SIZE
        start = noise_image(height, width, np.random.default_rng(seed))
        if args.max_size is not None:
            start = limit_size(start, args.max_size)
        source = {"noise": [width, height]}
    size = (start.shape[1], start.shape[0])
    weights = str(Path(args.weights).resolve()) if args.weights else None
    record = run_record(model=model.name, weights=weights, source=source, size=size,
                        dream=settings.as_dict(), motion=motion)
    check_resumable(folder, stored, record, done)

    dreamer = Dreamer(model, settings, quiet=args.quiet, notify=notify)
    dreamer.octave_sizes(start.shape[0], start.shape[1])  # too small for the model: fail before writing

    def dream(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return dreamer(image, rng=rng, progress=False)

    try:
        if args.restart:
            clear_frames(folder)
        if done < args.frames:
            if done:
                notify(f"continuing {folder} after frame {done} of {args.frames}")
            write_record(folder, record)
            render_frames(folder, start, dream, motion, seed, args.frames, quiet=args.quiet)
        elif done > args.frames:
            notify(f"{folder} holds {done} frames; the video uses the first {args.frames}")
        encode_video([frame_path(folder, i) for i in range(args.frames)], output, args.fps)
    except KeyboardInterrupt:
        # Frames are written atomically as they finish, so only the frame in progress is lost;
        # the video is written by the next run, which continues from the last saved frame.
        finished = min(count_frames(folder), args.frames)
        print(f"\nerror: interrupted; {finished} of {args.frames} frames are saved in {folder}; run the same "
              "command again to continue and write the video", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not args.quiet:
        print(output)
    return 0


if __name__ == "__main__":
    run_main(main)

#!/usr/bin/env python
"""DeepDream videos: the zoom feedback loop, or every frame of a clip.

    python dream_video.py --input assets/chelsea.png --frames 48 --output outputs/chelsea.mp4
    python dream_video.py --frames 120 --zoom 1.03 --rotate 0.5 --output outputs/noise.gif
    python dream_video.py ... --frames 240       # same command with more frames: continues the video
    python dream_video.py --video clip.mp4 --output outputs/dreamed.mp4   # a clip, with its sound

Every dream flag of dream.py works here (one shared definition, deepdream/cli/args.py). Frames are
saved as they finish in <output>_frames/; re-running the same command continues after the
last one, and Ctrl-C keeps every finished frame. The engine: deepdream/video.py (frame store,
encoders, zoom), deepdream/video_input.py and deepdream/flow.py (clips). See README.md, "Videos".
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402  (fast BLAS before anything imports mlx)
import numpy as np  # noqa: E402

from deepdream.cli.args import (  # noqa: E402
    OUTPUT_FOLDER,
    DreamArgumentParser,
    add_dream_arguments,
    add_image_arguments,
    number,
    whole_number,
)
from deepdream.cli.info import handle_info_flags  # noqa: E402
from deepdream.cli.model_choice import ALL_MODELS  # noqa: E402
from deepdream.cli.settings import model_and_settings, validate_args  # noqa: E402
from deepdream.cli.start_image import check_image_args, input_image, noise_start  # noqa: E402
from deepdream.errors import DreamError, Notify, make_notify, run_main  # noqa: E402
from deepdream.flow import FLOW_METHODS, Coherence  # noqa: E402
from deepdream.dreamer import Dreamer  # noqa: E402
from deepdream.settings import DreamSettings  # noqa: E402
from deepdream.video import (  # noqa: E402
    FRAME_DEFAULTS,
    H264_CONTAINERS,
    VIDEO_FORMATS,
    Dream,
    ExtraStreams,
    FrameMaker,
    Resume,
    Motion,
    Timing,
    check_video_output,
    file_sha256,
    check_resumable,
    frames_folder_for,
    make_video,
    resume_point,
    run_record,
    zoom_frames,
)
from deepdream.video_input import (  # noqa: E402
    VIDEO_EXTENSIONS,
    AudioCopy,
    ClipFrames,
    check_audio_fits,
    clip_record,
    open_clip,
)

DEFAULT_FRAMES = 48
DEFAULT_FPS = 12.0
#: Frame size: every frame is a dream, so videos default to smaller images than dream.py.
DEFAULT_SIZE = 256
DEFAULT_MAX_SIZE = 512
#: Flags of the zoom video alone (a clip brings its own frames, size and rate).
ZOOM_ONLY = ("frames", "zoom", "rotate", "translate", "fps", "width", "height")
#: Flags of a dreamed clip alone.
CLIP_ONLY = ("start", "end", "no_flow", "flow_blend", "occlusion_blend", "scene_cut", "flow_refresh", "flow_method",
             "no_audio")


def build_parser() -> argparse.ArgumentParser:
    formats = ", ".join(VIDEO_FORMATS)
    zoom, clip = Motion(), Coherence()
    parser = DreamArgumentParser(
        description="DeepDream videos. Zoom: dream a frame, zoom into its centre (optionally rotate, translate, "
                    "blend), dream again; without --input it starts from noise. Clip (--video): dream every frame "
                    "of a video, carrying the dream along the optical flow so it sticks to the moving scene, and "
                    "keep its sound. Re-run the same command to continue an interrupted video (or to extend a "
                    "zoom with a larger --frames).",
        epilog=f"Each frame is a short dream: --octaves {FRAME_DEFAULTS['octaves']} --steps {FRAME_DEFAULTS['steps']} "
               "unless --preset or those flags are given (the model's other recipe values apply). "
               "Examples: python dream_video.py --input assets/chelsea.png --frames 48 --output outputs/chelsea.mp4; "
               "python dream_video.py --video clip.mp4 --output outputs/dreamed.mp4",
    )
    add_image_arguments(parser, noun="frame", default_size=DEFAULT_SIZE, default_max_size=DEFAULT_MAX_SIZE,
                        output_help=f"the video: {formats} (default {OUTPUT_FOLDER}/<input-stem>_<model>.mp4); "
                                    "frames go to <output-stem>_frames/ beside it")

    g = parser.add_argument_group("zoom video")
    g.add_argument("--frames", type=whole_number, metavar="N",
                   help=f"number of frames (default {DEFAULT_FRAMES}); raise it on a re-run to extend the video")
    g.add_argument("--zoom", type=number, metavar="S",
                   help=f"scale per frame around the centre (default {zoom.zoom}; 1 = no zoom, below 1 zooms out)")
    g.add_argument("--rotate", type=number, metavar="DEG",
                   help=f"rotation per frame in degrees, counter-clockwise (default {zoom.rotate:g})")
    g.add_argument("--translate", type=number, nargs=2, metavar=("DX", "DY"),
                   help="shift per frame in pixels, right and down (default 0 0)")
    g.add_argument("--fps", type=number, metavar="N",
                   help=f"frames per second of the video (default {DEFAULT_FPS:g})")

    g = parser.add_argument_group("clip (--video)")
    g.add_argument("--video", metavar="PATH",
                   help="a video to dream frame by frame (MP4, MOV, MKV, WebM...: whatever FFmpeg reads), at "
                        "--max-size, with its sound and timing")
    g.add_argument("--start", type=number, metavar="SEC", help="dream from this time on (seconds; default 0)")
    g.add_argument("--end", type=number, metavar="SEC", help="stop before this time (seconds; default the end)")
    g.add_argument("--no-flow", action="store_true", default=None,
                   help="dream every frame on its own (flickers: each frame grows its own hallucinations)")
    g.add_argument("--flow-blend", type=number, metavar="B",
                   help=f"share of the previous dreamed frame, moved along the optical flow, blended into the next "
                        f"input frame before it is dreamed (default {clip.flow_blend:g}; higher sticks more, lower "
                        "follows the input more)")
    g.add_argument("--occlusion-blend", type=number, metavar="B",
                   help=f"the same where the flow is unreliable: occluded or uncovered pixels, the border (default "
                        f"{clip.occlusion_blend:g}: the input alone)")
    g.add_argument("--scene-cut", type=number, metavar="D",
                   help=f"a frame differing from the moved previous one by more than D (mean, 0-1) is a scene cut, "
                        f"where the dream restarts from the input (default {clip.scene_cut:g})")
    g.add_argument("--flow-refresh", type=number, metavar="R",
                   help=f"share of a full dream added where the previous dream was carried along (default "
                        f"{clip.flow_refresh:g}; 1 dreams carried frames fully, which flickers more)")
    g.add_argument("--flow-method", choices=FLOW_METHODS, default=None,
                   help=f"OpenCV optical flow (default {clip.flow_method})")
    g.add_argument("--no-audio", action="store_true", default=None, help="leave the clip's sound out")

    g = parser.add_argument_group("both")
    g.add_argument("--blend", type=number, metavar="B",
                   help="share of the undreamed frame kept: frame = B * start + (1 - B) * dream(start), where start "
                        "is the previous frame moved (zoom) or the input frame with the previous dream carried in "
                        "(clip) (default 0: the full dream; 0.5-0.8 grows the dream more slowly)")
    g.add_argument("--restart", action="store_true",
                   help="delete the frames of an earlier run in the frames folder and start over")
    add_dream_arguments(parser)
    return parser


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, object]:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _flags(names: object) -> str:
    return ", ".join("--" + name.replace("_", "-") for name in names)


def check_common_args(args: argparse.Namespace) -> None:
    if args.model == ALL_MODELS:
        raise DreamError("--model all is not supported for videos; name one model")
    check_image_args(args, "frames")


def check_zoom_args(args: argparse.Namespace) -> Motion:
    """The zoom's checks that need no model, so a typo fails at once."""
    if (clip_flags := _given(args, CLIP_ONLY)):
        raise DreamError(f"{_flags(clip_flags)} {'is' if len(clip_flags) == 1 else 'are'} for dreaming a clip; "
                         "add --video CLIP (or drop them for a zoom video)")
    if args.input is not None and Path(args.input).suffix.lower() in VIDEO_EXTENSIONS:
        raise DreamError(f"'{args.input}' is a video; --input is the zoom's start image, use --video {args.input} "
                         "to dream every frame of the clip")
    check_common_args(args)
    if args.frames is not None and args.frames < 1:
        raise DreamError(f"--frames must be at least 1 (got {args.frames})")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise DreamError(f"--fps must be a positive number (got {args.fps:g}); 12-30 is typical")
    motion = Motion(**_given(args, ("zoom", "rotate", "blend")),
                    **({"translate": tuple(args.translate)} if args.translate is not None else {}))
    motion.validate()
    return motion


def check_clip_args(args: argparse.Namespace) -> Coherence:
    """A clip's checks that need no model."""
    if args.input is not None:
        raise DreamError("--input is the zoom video's start image; with --video the clip's frames are the input, "
                         "drop --input")
    if (zoom_flags := _given(args, ZOOM_ONLY)):
        raise DreamError(f"{_flags(zoom_flags)} {'is' if len(zoom_flags) == 1 else 'are'} for the zoom video; a "
                         "--video clip keeps its own frames, size (see --max-size) and frame rate (cut it with "
                         "--start/--end)")
    check_common_args(args)
    for flag, value in (("--start", args.start), ("--end", args.end)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise DreamError(f"{flag} must be a time in seconds from the clip's start, 0 or more (got {value:g})")
    if args.start is not None and args.end is not None and args.end <= args.start:
        raise DreamError(f"--end {args.end:g} is not after --start {args.start:g}; give the part of the clip to "
                         "dream as --start SEC --end SEC")
    Motion(**_given(args, ("blend",))).validate()
    coherence = Coherence(**_given(args, ("flow_blend", "occlusion_blend", "scene_cut", "flow_refresh", "flow_method")),
                          no_flow=bool(args.no_flow))
    coherence.validate()
    return coherence


def dream_frames(args: argparse.Namespace, model: models.DreamModel, settings: DreamSettings, resume: Resume,
                 output: Path, *, source: dict[str, object], size: tuple[int, int], motion: dict[str, object],
                 frames: Callable[[Dream], FrameMaker], total: int, timing: Timing, extra: ExtraStreams | None,
                 notify: Notify) -> int:
    """What both kinds of video share once their input is read: the dreamer, the frames, the video."""
    folder = frames_folder_for(output)
    settings = replace(settings, seed=resume.seed)
    weights = str(Path(args.weights).resolve()) if args.weights else None
    record = run_record(model=model.name, weights=weights, source=source, size=size, dream=settings.as_dict(),
                        motion=motion)
    check_resumable(folder, resume.stored, record, resume.done)
    dreamer = Dreamer(model, settings, quiet=args.quiet, notify=notify)
    dreamer.octave_sizes(size[1], size[0])  # too small for the model: fail before writing

    def dream(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return dreamer(image, rng=rng, progress=False)

    make_video(folder, output, frames(dream), record=record, resume=resume, total=total, size=size, timing=timing,
               extra=extra, restart=args.restart, quiet=args.quiet, notify=notify)
    if not args.quiet:
        print(output)
    return 0


def main_zoom(args: argparse.Namespace, notify: Notify) -> int:
    motion = check_zoom_args(args)
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
    resume = resume_point(frames_folder_for(output), args.seed, restart=args.restart)
    if start is not None:
        source: dict[str, object] = {"input_sha256": file_sha256(args.input)}
    else:
        start = noise_start(args, np.random.default_rng(resume.seed), DEFAULT_SIZE)
        source = {"noise": [args.width or DEFAULT_SIZE, args.height or DEFAULT_SIZE]}
    total = args.frames or DEFAULT_FRAMES
    return dream_frames(args, model, settings, resume, output, source=source, size=(start.shape[1], start.shape[0]),
                        motion=asdict(motion), frames=lambda dream: zoom_frames(start, dream, motion, resume.seed),
                        total=total, timing=Timing.constant(args.fps or DEFAULT_FPS, total), extra=None,
                        notify=notify)


def main_clip(args: argparse.Namespace, notify: Notify) -> int:
    coherence = check_clip_args(args)
    validate_args(args)
    output = Path(args.output) if args.output else None
    if output is not None:
        check_video_output(output, args.video)
    # The clip is probed before the model loads: a file that is no video fails at once.
    clip = open_clip(args.video, start=args.start, end=args.end, max_size=args.max_size or DEFAULT_MAX_SIZE)
    model, settings = model_and_settings(args, notify, over_recipe=FRAME_DEFAULTS)
    name = Path(args.weights).stem if args.weights else model.name
    if output is None:
        output = check_video_output(Path(OUTPUT_FOLDER) / f"{Path(args.video).stem}_{name}.mp4", args.video)
    sound = bool(clip.audio) and not args.no_audio
    if sound and output.suffix.lower() not in H264_CONTAINERS:
        notify(f"{output.suffix} holds no sound; the clip's audio is left out (write .mp4 or .mkv to keep it)")
        sound = False
    if sound:
        check_audio_fits(clip, output, H264_CONTAINERS[output.suffix.lower()])
    resume = resume_point(frames_folder_for(output), args.seed, restart=args.restart)
    blend = Motion(**_given(args, ("blend",))).blend
    return dream_frames(args, model, settings, resume, output, source={"video_sha256": file_sha256(args.video)},
                        size=clip.size, motion=clip_record(clip, coherence, blend),
                        frames=lambda dream: ClipFrames(clip, dream, coherence, blend, resume.seed),
                        total=clip.frame_count, timing=clip.timing(), extra=AudioCopy(clip) if sound else None,
                        notify=notify)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    notify = make_notify(args.quiet)
    if handle_info_flags(args):
        return 0
    if args.video is not None:
        return main_clip(args, notify)
    return main_zoom(args, notify)


if __name__ == "__main__":
    run_main(main)

#!/usr/bin/env python
"""DeepDream videos: the zoom feedback loop, or every frame of a clip.

    python dream_video.py --input assets/chelsea.png --frames 48 --output outputs/chelsea.mp4
    python dream_video.py --frames 120 --zoom 1.03 --rotate 0.5 --output outputs/noise.gif
    python dream_video.py ... --frames 240       # same command with more frames: continues the video
    python dream_video.py --video clip.mp4 --output outputs/dreamed.mp4   # a clip, with its sound
    mlx.launch -n 4 --hostfile hosts.json -- python dream_video.py --video clip.mp4 ...   # in chunks over 4 ranks

Every dream flag of dream.py works here (one shared definition, deepdream/cli/args.py). Frames are
saved as they finish in <output>_frames/; re-running the same command continues after the
last one, and Ctrl-C keeps every finished frame. The engine: deepdream/video/ (one module per
mode: zoom.py, clip.py; the frame store, the encoders and the run they share). See README.md, "Videos".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402,F401  (fast BLAS before anything imports mlx)

from deepdream import distributed as dist  # noqa: E402
from deepdream.cli.args import (  # noqa: E402
    OUTPUT_FOLDER,
    DreamArgumentParser,
    add_dream_arguments,
    add_image_arguments,
    command_line,
)
from deepdream.cli.info import handle_info_flags  # noqa: E402
from deepdream.errors import make_notify, run_main  # noqa: E402
from deepdream.video.clip import ClipMode  # noqa: E402
from deepdream.video.encoding import VIDEO_FORMATS  # noqa: E402
from deepdream.video.modes import (  # noqa: E402
    DEFAULT_MAX_SIZE,
    DEFAULT_SIZE,
    FRAME_DEFAULTS,
    add_shared_arguments,
    choose,
    run,
)
from deepdream.video.zoom import ZoomMode  # noqa: E402

#: The kinds of video, in the order --help shows their flags; the first chosen by its flag runs,
#: else the one that needs no flag (the zoom).
MODES = (ZoomMode(), ClipMode())


def build_parser() -> argparse.ArgumentParser:
    formats = ", ".join(VIDEO_FORMATS)
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
    for mode in MODES:
        mode.add_arguments(parser.add_argument_group(mode.title))
    add_shared_arguments(parser)
    add_dream_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    notify = dist.main_only(make_notify(args.quiet))
    with dist.session("run the same command to continue and write the video"):
        if handle_info_flags(args):
            return 0
        return run(choose(MODES, args), MODES, args, notify, command_line(parser, args, "dream_video.py", quiet=None))


if __name__ == "__main__":
    run_main(main)

"""The zoom video: dream frame n, move it (zoom, rotate, translate), dream again.

Frame 0 is the dream of the start image (``--input``, or noise). Frame n+1 is made from frame n alone::

    moved     = move(frame_n)              # zoom into the centre, then rotate, then translate
    frame_n+1 = blend * moved + (1 - blend) * dream(moved)

``blend`` is the share of the previous dreamed frame (after the move) kept in the next one:
0 is the classic feedback loop of the 2015 notebook (every frame fully re-dreamed), higher
values grow the dream more slowly and flicker less.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.ndimage as nd

from ..cli.args import number, whole_number
from ..cli.start_image import noise_size, noise_start
from ..errors import DreamError, Notify
from ..image_io import load_image
from .encoding import Timing
from .modes import DEFAULT_SIZE, Video, VideoMode, frame_max_size, given
from ..outputs import file_sha256
from .store import Dream, FrameMaker, Resume, frame_rng, quantise

DEFAULT_FRAMES = 48
DEFAULT_FPS = 12.0

#: Interpolation order of the move: bilinear, as the 2015 notebook's nd.affine_transform; its
#: slight softening each frame is part of the zoom look (the dream re-sharpens it).
ORDER = 1
#: Where the move uncovers the border (zoom < 1, rotation, translation) the image is mirrored,
#: so the dream continues texture instead of smearing the edge pixels into streaks.
BORDER_MODE = "reflect"


@dataclass(frozen=True)
class Motion:
    """How frame n+1 is made from frame n before dreaming, and how much of frame n is kept."""

    zoom: float = 1.05                         # scale per frame (> 1 zooms in)
    rotate: float = 0.0                        # degrees per frame, counter-clockwise
    translate: tuple[float, float] = (0.0, 0.0)   # (dx, dy) pixels per frame: right, down
    blend: float = 0.0                         # share of the moved previous frame kept, 0..1

    def validate(self) -> None:
        if not (math.isfinite(self.zoom) and self.zoom > 0):
            raise DreamError(f"--zoom must be a positive number (got {self.zoom:g}); 1.05 zooms in 5% per frame, "
                             "below 1 zooms out")
        if not math.isfinite(self.rotate):
            raise DreamError(f"--rotate must be a number of degrees (got {self.rotate:g})")
        if not all(math.isfinite(t) for t in self.translate):
            raise DreamError("--translate takes two numbers of pixels, DX DY (e.g. --translate 2 0)")
        if not (0.0 <= self.blend <= 1.0):
            raise DreamError(f"--blend must be between 0 and 1 (got {self.blend:g}); it is the share of the previous "
                             "frame kept, 0 = full dream every frame")


def move(frame: np.ndarray, motion: Motion) -> np.ndarray:
    """Zoom into the centre of ``frame`` (H, W, 3) and rotate/translate it; same size out.

    The zoom is the 2015 notebook's ``nd.affine_transform`` (bilinear), written exactly: output
    pixel ``o`` samples the input at ``c + (o - c) / zoom - translation`` around the true centre
    ``c``, which is the centre crop of the image scaled by ``zoom`` with sub-pixel accuracy (an
    ``nd.zoom`` to a whole number of pixels would round the scale and shift the centre by up to
    half a pixel, which the feedback loop turns into a drifting vanishing point). The
    translation rides in the same resampling; rotation is ``nd.rotate`` with ``reshape=False``.
    """
    image = np.asarray(frame, dtype=np.float32)
    height, width = image.shape[:2]
    out = image
    dx, dy = motion.translate
    if motion.zoom != 1.0 or dx or dy:
        inv = 1.0 / motion.zoom
        centre = np.array([(height - 1) / 2.0, (width - 1) / 2.0, 0.0])
        matrix = np.array([inv, inv, 1.0])  # a diagonal: per-axis scale, channels untouched
        offset = centre - matrix * centre - np.array([dy, dx, 0.0])
        out = nd.affine_transform(out, matrix, offset=offset, output_shape=image.shape, order=ORDER,
                                  mode=BORDER_MODE)
    if motion.rotate:
        # axes (1, 0): a positive angle turns the picture counter-clockwise as displayed.
        out = nd.rotate(out, motion.rotate, axes=(1, 0), reshape=False, order=ORDER, mode=BORDER_MODE)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def next_frame(previous: np.ndarray | None, start: np.ndarray, index: int, dream: Dream, motion: Motion,
               seed: int) -> np.ndarray:
    """Zoom frame ``index`` (float RGB, already quantised to what its PNG holds)."""
    if index == 0 or previous is None:
        return quantise(dream(start, frame_rng(seed, 0)))
    moved = move(previous, motion)
    if motion.blend == 1.0:  # nothing of the dream would be kept
        return quantise(moved)
    dreamed = dream(moved, frame_rng(seed, index))
    return quantise(motion.blend * moved + (1.0 - motion.blend) * dreamed)


def zoom_frames(start: np.ndarray, dream: Dream, motion: Motion, seed: int) -> FrameMaker:
    return lambda index, previous: next_frame(previous, start, index, dream, motion, seed)


class ZoomMode(VideoMode):
    """The zoom feedback video, from ``--input`` or noise: the mode used when no other is chosen."""

    title = "zoom video"
    noun = "the zoom video"
    borrowed = ("width", "height")   # the noise start's size

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        zoom = Motion()
        group.add_argument("--frames", type=whole_number, metavar="N",
                           help=f"number of frames (default {DEFAULT_FRAMES}); raise it on a re-run to extend the video")
        group.add_argument("--zoom", type=number, metavar="S",
                           help=f"scale per frame around the centre (default {zoom.zoom}; 1 = no zoom, below 1 zooms out)")
        group.add_argument("--rotate", type=number, metavar="DEG",
                           help=f"rotation per frame in degrees, counter-clockwise (default {zoom.rotate:g})")
        group.add_argument("--translate", type=number, nargs=2, metavar=("DX", "DY"),
                           help="shift per frame in pixels, right and down (default 0 0)")
        group.add_argument("--fps", type=number, metavar="N",
                           help=f"frames per second of the video (default {DEFAULT_FPS:g})")

    def foreign_flags_hint(self, owner: VideoMode) -> str:
        return f"add {owner.choose_hint} (or drop them for a zoom video)"

    def check_usage(self, args: argparse.Namespace, others: Sequence[VideoMode]) -> None:
        # A clip given to --input is recognised by its content when it is read (image_io.load_image).
        self.refuse_flags_of(others, args)

    def check(self, args: argparse.Namespace) -> Motion:
        if args.frames is not None and args.frames < 1:
            raise DreamError(f"--frames must be at least 1 (got {args.frames})")
        if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
            raise DreamError(f"--fps must be a positive number (got {args.fps:g}); 12-30 is typical")
        motion = Motion(**given(args, ("zoom", "rotate", "blend")),
                        **({"translate": tuple(args.translate)} if args.translate is not None else {}))
        motion.validate()
        return motion

    def input_path(self, args: argparse.Namespace) -> str | None:
        return args.input

    def open(self, args: argparse.Namespace, motion: Motion) -> np.ndarray | None:
        """The start image, or None to start from noise (drawn once the run's seed is known)."""
        return None if args.input is None else load_image(args.input, max_size=frame_max_size(args))

    def video(self, args: argparse.Namespace, motion: Motion, start: np.ndarray | None, output: Path,
              resume: Resume, notify: Notify) -> Video:
        if start is not None:
            source: dict[str, object] = {"input_sha256": file_sha256(args.input)}
        else:
            size = noise_size(args, DEFAULT_SIZE)
            start = noise_start(size, np.random.default_rng(resume.seed), args.max_size)
            source = {"noise": list(size)}
        total = args.frames or DEFAULT_FRAMES
        return Video(source=source, size=(start.shape[1], start.shape[0]), motion=asdict(motion),
                     frames=lambda dream: zoom_frames(start, dream, motion, resume.seed), total=total,
                     timing=Timing.constant(args.fps or DEFAULT_FPS, total))

"""Dreamed videos: the frame store every video mode shares, the encoders, and the zoom feedback video.

The zoom: dream frame n, move it (zoom, rotate, translate), dream again.

Frame 0 is the dream of the start image. Frame n+1 is made from frame n alone::

    moved     = move(frame_n)              # zoom into the centre, then rotate, then translate
    frame_n+1 = blend * moved + (1 - blend) * dream(moved)

``blend`` is the share of the previous dreamed frame (after the move) kept in the next one:
0 is the classic feedback loop of the 2015 notebook (every frame fully re-dreamed), higher
values grow the dream more slowly and flicker less.

Each finished frame is written at once (atomically) as ``<output stem>_frames/NNNNN.png``
next to the video, with the run's settings in ``video.json``; the next frame is made from the
8-bit frame *as saved*, and frame n's jitter comes from a generator seeded with (seed, n), so
a run that was stopped and resumed writes the same bytes as one that never stopped.
``resume_point`` / ``make_video`` are that policy for any ``FrameMaker`` (the zoom's, and
``deepdream.video_input``'s for a dreamed clip).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import scipy.ndimage as nd
from PIL import Image
from tqdm import tqdm

from models.weights import atomic_write

from .errors import DreamError, Interrupted, Notify
from .image_io import ImageError, check_writable_folder, load_image, save_image, to_uint8

#: Video container by extension.
VIDEO_FORMATS = {".mp4": "H.264 MP4", ".mkv": "H.264 Matroska, holds any sound", ".gif": "animated GIF"}
#: FFmpeg's muxer for each H.264 container.
H264_CONTAINERS = {".mp4": "mp4", ".mkv": "matroska"}
#: Per-frame dream settings when neither a flag nor --preset gives them: a video has many
#: frames and the dream accumulates over them, so each frame needs far less than a still.
FRAME_DEFAULTS = {"octaves": 2, "steps": 5}
SETTINGS_FILE = "video.json"
RECORD_VERSION = 1
FRAME_PATTERN = re.compile(r"^(\d{5})\.png$")
#: Interpolation order of the move: bilinear, as the 2015 notebook's nd.affine_transform; its
#: slight softening each frame is part of the zoom look (the dream re-sharpens it).
ORDER = 1
#: Where the move uncovers the border (zoom < 1, rotation, translation) the image is mirrored,
#: so the dream continues texture instead of smearing the edge pixels into streaks.
BORDER_MODE = "reflect"
#: H.264 quality (constant rate factor; 18 is visually lossless for most content).
H264_CRF = 18


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


def frame_rng(seed: int, index: int) -> np.random.Generator:
    """Frame ``index``'s jitter generator: depends on (seed, index) only, so a resumed run repeats it."""
    return np.random.default_rng([seed, index])


def new_seed() -> int:
    """A seed for a run without --seed; it is stored with the frames so a resume keeps using it."""
    return secrets.randbelow(2**31)


@dataclass(frozen=True)
class Resume:
    """Where a run starts: the earlier run's record, the frames it kept, and the seed to use."""

    stored: dict[str, object] | None
    done: int
    seed: int


def resume_point(folder: Path, seed: int | None, restart: bool = False) -> Resume:
    """--restart ignores the frames in ``folder`` (they are deleted only once everything has been
    checked). Without --seed a new video gets a random seed and a continued one keeps its own."""
    stored = None if restart else read_record(folder)
    done = 0 if restart else count_frames(folder)
    if seed is None:
        stored_seed = stored.get("dream", {}).get("seed") if stored and done else None
        seed = stored_seed if isinstance(stored_seed, int) else new_seed()
    return Resume(stored, done, seed)


def quantise(rgb: np.ndarray) -> np.ndarray:
    """The frame exactly as its 8-bit PNG stores it (so frame n+1 is the same whether or not we resumed)."""
    return to_uint8(rgb).astype(np.float32) / 255.0


# -- the frames folder -------------------------------------------------------------------------------

def frames_folder_for(output: Path) -> Path:
    """``movie.mp4`` -> ``movie_frames/`` beside it."""
    return output.with_name(f"{output.stem}_frames")


def frame_path(folder: Path, index: int) -> Path:
    return folder / f"{index:05d}.png"


def count_frames(folder: Path) -> int:
    """How many finished frames the folder holds: 00000.png, 00001.png, ... without a gap."""
    if not folder.is_dir():
        return 0
    present = {int(m.group(1)) for name in os.listdir(folder) if (m := FRAME_PATTERN.match(name))}
    count = 0
    while count in present:
        count += 1
    return count


def clear_frames(folder: Path) -> int:
    """--restart: remove this tool's frames and settings file (nothing else) from ``folder``."""
    removed = 0
    if folder.is_dir():
        for name in os.listdir(folder):
            if FRAME_PATTERN.match(name) or name == SETTINGS_FILE:
                (folder / name).unlink()
                removed += 1
    return removed


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_record(*, model: str, weights: str | None, source: dict[str, object], size: tuple[int, int],
               dream: dict[str, object], motion: dict[str, object]) -> dict[str, object]:
    """Everything that decides the frames' pixels (not their count, the fps or the container).

    ``motion`` holds how a frame is made from the previous one, keyed like the flags that set it.
    """
    record = {"version": RECORD_VERSION, "model": model, "weights": weights, "source": source,
              "size": list(size), "dream": dream, "motion": motion}
    return json.loads(json.dumps(record))  # tuples -> lists, so it compares equal to what is read back


def read_record(folder: Path) -> dict[str, object] | None:
    path = folder / SETTINGS_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DreamError(f"cannot read '{path}' ({exc}); add --restart to start the video over") from None
    if not isinstance(record, dict):
        raise DreamError(f"'{path}' is not a settings file of dream_video.py; add --restart to start over")
    return record


def write_record(folder: Path, record: dict[str, object]) -> None:
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"

    def write(tmp: str) -> None:
        Path(tmp).write_text(text)

    atomic_write(folder / SETTINGS_FILE, write)


#: How a record field is named to the user when it differs.
_FIELD_NAMES = {"model": "--model", "weights": "--weights", "source": "the input (--input/--video/--width/--height)",
                "size": "frame size (--max-size)", "version": "settings file version"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def record_differences(old: dict[str, object], new: dict[str, object]) -> list[str]:
    """Readable differences between the stored and the requested settings, e.g. ``--steps 5 -> 3``."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key in ("dream", "motion") and isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    diffs.append(f"{_flag(sub)} {_show(a.get(sub))} -> {_show(b.get(sub))}")
        else:
            diffs.append(f"{_FIELD_NAMES.get(key, key)} {_show(a)} -> {_show(b)}")
    return diffs


def _show(value: object) -> str:
    if isinstance(value, list):
        return " ".join(_show(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={_show(v)}" for k, v in value.items() if k != "sha256") or "{}"
    return "default" if value is None else str(value)


def check_resumable(folder: Path, stored: dict[str, object] | None, record: dict[str, object], done: int) -> None:
    """Refuse to add frames made differently to the ones already there (--restart starts over)."""
    if done == 0:
        return
    if stored is None:
        raise DreamError(f"'{folder}' holds {done} frames but no {SETTINGS_FILE}, so they cannot be continued; "
                         "add --restart to replace them, or choose another --output")
    diffs = record_differences(stored, record)
    if diffs:
        shown = "; ".join(diffs[:4]) + ("; ..." if len(diffs) > 4 else "")
        raise DreamError(f"'{folder}' holds {done} frames made with other settings ({shown}); repeat the first "
                         "run's settings to continue it, or add --restart to start over")


# -- output ------------------------------------------------------------------------------------------

def check_video_output(path: Path, input_path: str | None = None) -> Path:
    """Fail before any dreaming if the video or its frames folder cannot be written."""
    ext = path.suffix.lower()
    if path.is_dir():
        raise DreamError(f"output '{path}' is a folder; give a file name such as {path / 'dream.mp4'}")
    if ext not in VIDEO_FORMATS:
        known = ", ".join(f"{e} ({what})" for e, what in VIDEO_FORMATS.items())
        raise DreamError(f"cannot write '{path}': unknown video extension '{ext or '(none)'}'; use {known}")
    if input_path is not None and path.exists() and Path(input_path).exists() and os.path.samefile(path, input_path):
        raise DreamError(f"output '{path}' is the input; choose another --output (the input is never overwritten)")
    check_writable_folder(path.parent)
    if path.exists() and not os.access(path, os.W_OK):
        raise DreamError(f"cannot write '{path}': the file is read-only; choose another --output")
    folder = frames_folder_for(path)
    if folder.exists() and not folder.is_dir():
        raise DreamError(f"the frames folder '{folder}' is a file; move it away or choose another --output")
    if folder.is_dir():  # a new one is made in path.parent, just checked; an old one may be read-only
        check_writable_folder(folder)
    return path


def even_size(width: int, height: int) -> tuple[int, int]:
    """H.264 in yuv420p stores colour at half resolution, so both sides must be even: drop the odd last pixel."""
    return width - width % 2, height - height % 2


@dataclass(frozen=True)
class Timing:
    """When each frame is shown: presentation times in ``time_base`` units (the first 0) and the nominal rate."""

    time_base: Fraction
    pts: tuple[int, ...]
    rate: Fraction

    @classmethod
    def constant(cls, fps: float, count: int) -> Timing:
        rate = Fraction(fps).limit_denominator(1001)
        return cls(1 / rate, tuple(range(count)), rate)

    def durations_ms(self) -> list[int]:
        """Each frame's display time in milliseconds, in the 10 ms steps a GIF counts in (the last frame
        lasts one nominal frame). Rounding the frame boundaries, not the durations, keeps the total exact."""
        times = [p * self.time_base for p in self.pts]
        times.append(times[-1] + 1 / self.rate)
        ticks = [round(t * 100) for t in times]
        return [10 * max(1, b - a) for a, b in zip(ticks, ticks[1:])]


#: Streams copied into the output beside the frames (a clip's sound): given the output container,
#: a context in which they are added and which yields (seconds, packet) in time order.
ExtraStreams = Callable[[object], AbstractContextManager[Iterator[tuple[float, object]]]]


def _read_frame(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot read frame '{path}' ({exc}); delete it (it is made again) or add --restart") from None


def encode_h264(frames: Sequence[Path], output: Path, timing: Timing, extra: ExtraStreams | None = None) -> None:
    """H.264 (libx264, yuv420p, BT.709) in MP4 (+faststart) or Matroska through PyAV, so it plays in browsers;
    ``extra`` streams (a clip's sound) are interleaved with the frames by time."""
    import av

    first = _read_frame(frames[0])
    width, height = even_size(first.shape[1], first.shape[0])
    container_format = H264_CONTAINERS[output.suffix.lower()]
    options = {"movflags": "+faststart"} if container_format == "mp4" else {}

    def write(tmp: str) -> None:
        with av.open(tmp, mode="w", format=container_format, options=options) as container:
            stream = container.add_stream("libx264", rate=timing.rate)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            stream.time_base = timing.time_base
            stream.codec_context.time_base = timing.time_base
            stream.options = {"crf": str(H264_CRF)}
            # sRGB frames converted with the BT.709 matrix and tagged so, or players guess (often 601).
            stream.codec_context.colorspace = av.video.reformatter.Colorspace.ITU709
            stream.codec_context.color_primaries = av.video.reformatter.ColorPrimaries.BT709
            stream.codec_context.color_trc = av.video.reformatter.ColorTrc.BT709
            stream.codec_context.color_range = av.video.reformatter.ColorRange.MPEG
            with extra(container) if extra is not None else nullcontext(iter(())) as pending:
                waiting = next(pending, None)

                def mux(packets: Sequence[object]) -> None:
                    nonlocal waiting
                    for packet in packets:
                        shown = float(packet.pts * packet.time_base) if packet.pts is not None else math.inf
                        while waiting is not None and waiting[0] <= shown:
                            container.mux(waiting[1])
                            waiting = next(pending, None)
                        container.mux(packet)

                for path, pts in zip(frames, timing.pts):
                    rgb = _read_frame(path)
                    if rgb.shape[:2] != first.shape[:2]:
                        raise DreamError(f"frame '{path}' is {rgb.shape[1]}x{rgb.shape[0]}, not "
                                         f"{first.shape[1]}x{first.shape[0]} like the others; add --restart")
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:height, :width]), format="rgb24")
                    frame = frame.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
                    frame.pts, frame.time_base = pts, timing.time_base
                    mux(stream.encode(frame))
                mux(stream.encode())
                while waiting is not None:
                    container.mux(waiting[1])
                    waiting = next(pending, None)

    atomic_write(output, write)


def encode_gif(frames: Sequence[Path], output: Path, timing: Timing) -> None:
    """Animated GIF (Pillow; an adaptive 256-colour palette per frame), looping forever, no sound."""
    images = [Image.fromarray(_read_frame(path)) for path in frames]
    durations = timing.durations_ms()

    def write(tmp: str) -> None:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)

    atomic_write(output, write)


def encode_video(frames: Sequence[Path], output: Path, timing: Timing, extra: ExtraStreams | None = None) -> None:
    if not frames:
        raise DreamError("no frames to encode")
    try:
        if output.suffix.lower() == ".gif":
            encode_gif(frames, output, timing)
        else:
            encode_h264(frames, output, timing, extra)
    except OSError as exc:
        raise DreamError(f"cannot write '{output}' ({exc.strerror or exc}); choose another --output") from None


# -- the frame loop ----------------------------------------------------------------------------------

Dream = Callable[[np.ndarray, np.random.Generator], np.ndarray]
#: Frame ``index`` from the previous frame as saved (None for the first frame of a run); float RGB.
FrameMaker = Callable[[int, np.ndarray | None], np.ndarray]


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


def render_frames(folder: Path, make: FrameMaker, total: int, size: tuple[int, int], *, quiet: bool = False) -> int:
    """Make frames ``count_frames(folder)`` .. ``total - 1`` of ``size`` (width, height), saving each when
    done; returns the count made.

    A resumed run starts from the last frame on disk. Ctrl-C (KeyboardInterrupt) propagates
    after the finished frames are safely on disk; the frame in progress is lost.
    """
    done = count_frames(folder)
    previous = load_image(frame_path(folder, done - 1), what="last frame") if done else None
    if previous is not None and (previous.shape[1], previous.shape[0]) != size:
        raise DreamError(f"frame '{frame_path(folder, done - 1)}' is {previous.shape[1]}x{previous.shape[0]}, but "
                         f"this run makes {size[0]}x{size[1]} frames; add --restart to start over")
    made = 0
    with tqdm(total=total, initial=min(done, total), unit="frame", desc="frames", disable=quiet, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for index in range(done, total):
            previous = quantise(make(index, previous))
            save_image(frame_path(folder, index), previous)
            made += 1
            bar.update(1)
    return made


# -- a whole run: the frames, then the video ---------------------------------------------------------

def make_video(folder: Path, output: Path, make: FrameMaker, *, record: dict[str, object], resume: Resume,
               total: int, size: tuple[int, int], timing: Timing, extra: ExtraStreams | None = None,
               restart: bool, quiet: bool, notify: Notify) -> None:
    """Make the frames still missing (continuing after ``resume.done``), then encode the video.

    Ctrl-C raises ``Interrupted`` saying how many frames are kept: frames are written atomically
    as they finish, so only the frame in progress is lost; the next run continues from the last
    saved frame and writes the video.
    """
    try:
        if restart:
            clear_frames(folder)
        if resume.done < total:
            if resume.done:
                notify(f"continuing {folder} after frame {resume.done} of {total}")
            write_record(folder, record)
            render_frames(folder, make, total, size, quiet=quiet)
        elif resume.done > total:
            notify(f"{folder} holds {resume.done} frames; the video uses the first {total}")
        encode_video([frame_path(folder, i) for i in range(total)], output, timing, extra)
    except KeyboardInterrupt:
        finished = min(count_frames(folder), total)
        raise Interrupted(f"interrupted; {finished} of {total} frames are saved in {folder}; run the same "
                          "command again to continue and write the video") from None

"""The frame store every video mode shares: the frames folder, the run's record, resume, and the
frame loop (``make_video``: the missing frames, then the video).

Each finished frame is written at once (atomically) as ``<output stem>_frames/NNNNN.png``
next to the video, with the run's settings in ``video.json``; the next frame is made from the
8-bit frame *as saved*, and frame n's jitter comes from a generator seeded with (seed, n), so
a run that was stopped and resumed writes the same bytes as one that never stopped.
``resume_point`` / ``make_video`` are that policy for a ``FrameMaker`` made in order (the zoom's);
a clip's chunks (``chunks.py``) keep the same folder, record and checks through the job runner.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models.weights import atomic_write

from ..errors import DreamError, Interrupted, Notify
from ..image_io import check_writable_folder, load_image, save_image, to_uint8
from ..outputs import FIELD_NAMES, new_seed, record_differences, record_json, shown_differences
from .encoding import VIDEO_FORMATS, Dissolve, ExtraStreams, FrameSource, Timing, encode_video

SETTINGS_FILE = "video.json"
RECORD_VERSION = 1
FRAME_PATTERN = re.compile(r"^(\d{5})\.png$")
#: A clip chunk's warm-up frame: its own version of frame N, dissolved into in the video up to frame M,
#: the chunk's first frame (``chunks.py``).
OVERLAP_PATTERN = re.compile(r"^(\d{5})-to-(\d{5})\.png$")

Dream = Callable[[np.ndarray, np.random.Generator], np.ndarray]
#: Frame ``index`` from the previous frame as saved (None for the first frame of a run); float RGB.
FrameMaker = Callable[[int, np.ndarray | None], np.ndarray]


def frame_rng(seed: int, index: int) -> np.random.Generator:
    """Frame ``index``'s jitter generator: depends on (seed, index) only, so a resumed run repeats it."""
    return np.random.default_rng([seed, index])


@dataclass(frozen=True)
class Resume:
    """Where a run starts: the earlier run's record, how many frames it kept, and the seed to use."""

    stored: dict[str, object] | None
    done: int
    seed: int


def resume_point(folder: Path, seed: int | None, restart: bool = False) -> Resume:
    """--restart ignores the frames in ``folder`` (they are deleted only once everything has been
    checked). Without --seed a new video gets a random seed and a continued one keeps its own."""
    stored = None if restart else read_record(folder)
    done = 0 if restart else len(present_frames(folder))
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


def present_frames(folder: Path) -> set[int]:
    """The indices of the finished frames in ``folder`` (a clip made in chunks may have gaps)."""
    if not folder.is_dir():
        return set()
    return {int(m.group(1)) for name in os.listdir(folder) if (m := FRAME_PATTERN.match(name))}


def count_frames(folder: Path) -> int:
    """How many finished frames the folder holds: 00000.png, 00001.png, ... without a gap."""
    present = present_frames(folder)
    count = 0
    while count in present:
        count += 1
    return count


def overlap_path(folder: Path, index: int, into: int) -> Path:
    return folder / f"{index:05d}-to-{into:05d}.png"


def overlaps(folder: Path) -> dict[int, list[int]]:
    """{the first frame of a chunk: the warm-up frames it left for the dissolve into it}."""
    found: dict[int, list[int]] = {}
    if folder.is_dir():
        for name in os.listdir(folder):
            if m := OVERLAP_PATTERN.match(name):
                found.setdefault(int(m.group(2)), []).append(int(m.group(1)))
    return {into: sorted(indices) for into, indices in found.items()}


def prune_overlaps(folder: Path, present: set[int]) -> None:
    """Remove the warm-up frames of chunks that never reached their first frame (it is made otherwise now)."""
    for into, indices in overlaps(folder).items():
        if into not in present:
            for index in indices:
                overlap_path(folder, index, into).unlink(missing_ok=True)


def frame_sources(folder: Path, total: int) -> list[FrameSource]:
    """What each of the video's ``total`` frames is read from: its file, or across a chunk border a
    dissolve from the earlier chunk's frame into the next chunk's warm-up frame, its weight rising
    linearly to the border (so the change between two dreams spreads over the warm-up frames)."""
    sources: list[FrameSource] = [frame_path(folder, i) for i in range(total)]
    for into, indices in overlaps(folder).items():
        for k, index in enumerate(indices):
            if index < total:
                sources[index] = Dissolve(frame_path(folder, index), overlap_path(folder, index, into),
                                          (k + 1) / (len(indices) + 1))
    return sources


def clear_frames(folder: Path) -> int:
    """--restart: remove this tool's frames and settings file (nothing else) from ``folder``."""
    removed = 0
    if folder.is_dir():
        for name in os.listdir(folder):
            if FRAME_PATTERN.match(name) or OVERLAP_PATTERN.match(name) or name == SETTINGS_FILE:
                (folder / name).unlink()
                removed += 1
    return removed


def run_record(*, model: str, weights: str | None, source: dict[str, object], size: tuple[int, int],
               dream: dict[str, object], motion: dict[str, object]) -> dict[str, object]:
    """Everything that decides the frames' pixels (not their count, the fps or the container).

    ``motion`` holds how a frame is made from the previous one, keyed like the flags that set it.
    """
    return record_json({"version": RECORD_VERSION, "model": model, "weights": weights, "source": source,
                        "size": list(size), "dream": dream, "motion": motion})


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
_FIELD_NAMES = {**FIELD_NAMES, "source": "the input (--input/--video/--width/--height)",
                "size": "frame size (--max-size)", "version": "settings file version"}


def check_resumable(folder: Path, stored: dict[str, object] | None, record: dict[str, object], done: int) -> None:
    """Refuse to add frames made differently to the ones already there (--restart starts over)."""
    if done == 0:
        return
    if stored is None:
        raise DreamError(f"'{folder}' holds {done} frames but no {SETTINGS_FILE}, so they cannot be continued; "
                         "add --restart to replace them, or choose another --output")
    diffs = record_differences(stored, record, _FIELD_NAMES)
    if diffs:
        shown = shown_differences(diffs)
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


# -- the frame loop ----------------------------------------------------------------------------------

def make_frames(folder: Path, make: FrameMaker, total: int, size: tuple[int, int], *, quiet: bool = False) -> int:
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
            make_frames(folder, make, total, size, quiet=quiet)
        elif resume.done > total:
            notify(f"{folder} holds {resume.done} frames; the video uses the first {total}")
        encode_video([frame_path(folder, i) for i in range(total)], output, timing, extra)
    except KeyboardInterrupt:
        finished = min(count_frames(folder), total)
        raise Interrupted(f"interrupted; {finished} of {total} frames are saved in {folder}; run the same "
                          "command again to continue and write the video") from None

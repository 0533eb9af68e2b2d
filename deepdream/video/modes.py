"""What a video mode is, and the run every mode shares.

A mode (``zoom.ZoomMode``, ``clip.ClipMode``) declares its argument group, its checks (no model
needed, so a typo fails at once), how its input is read before the model loads, and the
``Video`` it makes of it: the record of its input, the frame size, how each frame is made (a
``store.FrameMaker``), how many, when each is shown and what else goes into the file. ``run``
does the rest, the same for every mode: the common checks, the output path, the model and its
per-frame settings, resume (``plan_video``), the frames and the video. A mode whose frames can be
made apart (``splits``: a clip, in chunks) gives a ``jobs.Job`` instead, which the job runner
spreads over the ranks of ``mlx.launch``; the others run on one process and refuse several.
dream_video.py lists the modes and runs the one its flags choose.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from models import DreamModel

from .. import distributed as dist
from ..cli.args import OUTPUT_FOLDER, flag_dests, flag_name, number
from ..cli.model_choice import ALL_MODELS
from ..cli.pages import write_video_page
from ..cli.settings import model_and_settings, validate_args
from ..cli.start_image import check_image_args
from ..dreamer import Dreamer
from ..errors import DreamError, Notify
from ..jobs import Job, JobReport, run_job
from ..settings import DreamSettings
from .encoding import ExtraStreams, Timing
from .store import (
    Dream,
    FrameMaker,
    Resume,
    check_resumable,
    check_video_output,
    frame_path,
    frames_folder_for,
    make_video,
    resume_point,
    run_record,
)

#: Per-frame dream settings when neither a flag nor --preset gives them: a video has many
#: frames and the dream accumulates over them, so each frame needs far less than a still.
FRAME_DEFAULTS = {"octaves": 2, "steps": 5}
#: Frame size: every frame is a dream, so videos default to smaller images than dream.py.
DEFAULT_SIZE = 256
DEFAULT_MAX_SIZE = 512


def frame_max_size(args: argparse.Namespace) -> int:
    """The longest side of a frame read from the input: --max-size, else the videos' default."""
    return args.max_size if args.max_size is not None else DEFAULT_MAX_SIZE


def given(args: argparse.Namespace, names: Sequence[str]) -> dict[str, object]:
    """The flags of ``names`` that were given, by dest."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


@dataclass(frozen=True)
class Video:
    """What a mode makes of its input: everything the frame store needs to make the video."""

    source: dict[str, object]                 # the input as the run's record names it
    size: tuple[int, int]                     # (width, height) of every frame
    motion: dict[str, object]                 # how a frame is made, keyed like the flags that set it
    frames: Callable[[Dream], FrameMaker] | None   # given the dream of one image, frame ``index``'s maker
                                                   # (None: a mode that splits makes its frames as a job)
    total: int                                # frames in the video
    timing: Timing                            # when each is shown
    extra: ExtraStreams | None = None         # streams copied beside the frames (a clip's sound)


class VideoMode(ABC):
    """One kind of video: its flags, its checks, and how its frames are made (see the module)."""

    #: Its argument group's title.
    title: str
    #: What its flags are for, as an error about one of them says it.
    noun: str
    #: The flag (dest) that chooses it, and how to give it; None for the mode used without one.
    chooser: str | None = None
    choose_hint: str = ""
    #: Flags of the shared groups that only this mode takes.
    borrowed: tuple[str, ...] = ()
    #: Whether its frames can be made in parts, apart (a clip's chunks over ranks); if so, ``job``.
    splits: bool = False

    @abstractmethod
    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        """Its own flags, each defaulting to None (so that a given one can be told apart)."""

    @cached_property
    def flags(self) -> tuple[str, ...]:
        """The dests of the flags only this mode takes."""
        return tuple(d for d in flag_dests(self.add_arguments) if d != self.chooser) + self.borrowed

    def chosen(self, args: argparse.Namespace) -> bool:
        return self.chooser is not None and getattr(args, self.chooser) is not None

    def refuse_flags_of(self, others: Sequence[VideoMode], args: argparse.Namespace) -> None:
        """One line for flags that belong to another mode."""
        for other in others:
            names = list(given(args, (other.chooser,) if other.chooser else ())) + list(given(args, other.flags))
            if names:
                flags = ", ".join(flag_name(name) for name in names)
                raise DreamError(f"{flags} {'is' if len(names) == 1 else 'are'} for {other.noun}; "
                                 f"{self.foreign_flags_hint(other)}")

    @abstractmethod
    def foreign_flags_hint(self, owner: VideoMode) -> str:
        """The way out when flags of ``owner`` are given to this mode."""

    @abstractmethod
    def check_usage(self, args: argparse.Namespace, others: Sequence[VideoMode]) -> None:
        """Which flags and inputs this mode takes (``refuse_flags_of`` the others)."""

    @abstractmethod
    def check(self, args: argparse.Namespace) -> object:
        """Its flags' values checked (no model needed), as the settings ``open`` and ``video`` receive."""

    @abstractmethod
    def input_path(self, args: argparse.Namespace) -> str | None:
        """The file it reads (never overwritten; names the default output), or None."""

    @abstractmethod
    def open(self, args: argparse.Namespace, checked: object) -> object:
        """Read or probe the input before the model loads, so that a wrong path fails at once."""

    @abstractmethod
    def video(self, args: argparse.Namespace, checked: object, source: object, output: Path, resume: Resume,
              notify: Notify) -> Video:
        """The ``Video`` of the opened input, written to ``output``, continuing ``resume``."""

    def job(self, args: argparse.Namespace, checked: object, notify: Notify) -> VideoJob:
        """A mode that ``splits``: its video as a job for ``jobs.run_job`` (whose items call ``plan_video``)."""
        raise NotImplementedError


def add_shared_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every mode takes."""
    g = parser.add_argument_group("both")
    g.add_argument("--blend", type=number, metavar="B",
                   help="share of the undreamed frame kept: frame = B * start + (1 - B) * dream(start), where start "
                        "is the previous frame moved (zoom) or the input frame with the previous dream carried in "
                        "(clip) (default 0: the full dream; 0.5-0.8 grows the dream more slowly)")
    g.add_argument("--restart", action="store_true",
                   help="delete the frames of an earlier run in the frames folder and start over")


def choose(modes: Sequence[VideoMode], args: argparse.Namespace) -> VideoMode:
    """The mode whose flag was given, else the one that needs none."""
    return next((m for m in modes if m.chosen(args)), None) or next(m for m in modes if m.chooser is None)


def check_common_args(args: argparse.Namespace) -> None:
    if args.model == ALL_MODELS:
        raise DreamError("--model all is not supported for videos; name one model")
    check_image_args(args, "frames")


@dataclass(frozen=True)
class VideoPlan:
    """A mode's video, every check done (no model work yet): what making its frames needs."""

    model: DreamModel
    settings: DreamSettings       # with the run's seed
    dreamer: Dreamer
    resume: Resume
    output: Path
    folder: Path                  # the frames folder
    source: object                # what the mode's ``open`` read
    video: Video
    record: dict[str, object]


class VideoJob(Job):
    """A video made as a job (a mode that ``splits``)."""

    #: Its plan, once rank 0 has listed the items (``plan_video``).
    plan: VideoPlan | None = None


def plan_video(mode: VideoMode, args: argparse.Namespace, checked: object, notify: Notify) -> VideoPlan:
    """The output, the input read, the model and its per-frame settings, resume and its checks: every
    check before the first frame (rank 0's part of a split clip)."""
    input_path = mode.input_path(args)
    output = Path(args.output) if args.output else None
    if output is not None:
        check_video_output(output, input_path)  # before the slow part, so a typo costs nothing
    source = mode.open(args, checked)
    model, settings = model_and_settings(args, notify, over_recipe=FRAME_DEFAULTS)
    name = Path(args.weights).stem if args.weights else model.name
    if output is None:
        stem = Path(input_path).stem if input_path else "dream"
        output = check_video_output(Path(OUTPUT_FOLDER) / f"{stem}_{name}.mp4", input_path)
    folder = frames_folder_for(output)
    resume = resume_point(folder, args.seed, restart=args.restart)
    video = mode.video(args, checked, source, output, resume, notify)
    settings = replace(settings, seed=resume.seed)
    weights = str(Path(args.weights).resolve()) if args.weights else None
    record = run_record(model=model.name, weights=weights, source=video.source, size=video.size,
                        dream=settings.as_dict(), motion=video.motion)
    check_resumable(folder, resume.stored, record, resume.done)
    dreamer = Dreamer(model, settings, quiet=args.quiet, notify=notify)
    dreamer.octave_sizes(video.size[1], video.size[0])  # too small for the model: fail before writing
    return VideoPlan(model, settings, dreamer, resume, output, folder, source, video, record)


def video_page(plan: VideoPlan, command: str | None, quiet: bool) -> Path:
    """``<output stem>.html`` beside the video: a frame from its middle as the poster, its settings and
    ``command``, the command that made it."""
    page = write_video_page(plan.output, frame_path(plan.folder, plan.video.total // 2), command, plan.record)
    if not quiet:
        print(page, flush=True)
    return page


def run(mode: VideoMode, modes: Sequence[VideoMode], args: argparse.Namespace, notify: Notify,
        command: str | None = None) -> int:
    """Make ``mode``'s video from the parsed flags: every check first, then the frames still missing, then
    the file and its page (``video_page``, showing ``command``).

    A mode that splits (a clip) runs as a job (``jobs.run_job``: one process, or every rank of
    ``mlx.launch``), whose report brings the page; the others make their frames in order, on one process.
    """
    mode.check_usage(args, [m for m in modes if m is not mode])
    check_common_args(args)
    checked = mode.check(args)
    validate_args(args)
    if dist.size() > 1 and not mode.splits:
        raise DreamError(f"{mode.noun} is made one frame after another (each from the one before), so it runs on "
                         f"one process: start it without mlx.launch ({dist.size()} ranks here); a --video clip is "
                         "the video that spreads over ranks")
    if mode.splits:
        job = mode.job(args, checked, notify)

        def page(report: JobReport) -> None:
            if job.plan is not None and job.plan.output in report.extra:   # the video was made, whole
                video_page(job.plan, command, args.quiet)

        run_job(job, quiet=args.quiet, notify=notify, finished=page)
        return 0
    plan = plan_video(mode, args, checked, notify)

    def dream(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return plan.dreamer(image, rng=rng, progress=False)

    assert plan.video.frames is not None
    make_video(plan.folder, plan.output, plan.video.frames(dream), record=plan.record, resume=plan.resume,
               total=plan.video.total, size=plan.video.size, timing=plan.video.timing, extra=plan.video.extra,
               restart=args.restart, quiet=args.quiet, notify=notify)
    if not args.quiet:
        print(plan.output)
    video_page(plan, command, args.quiet)
    return 0

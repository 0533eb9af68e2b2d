"""Dreaming an existing clip (``--video``): decode it with PyAV, make each frame from its input frame and
the previous dream (``flow``), and copy its sound into the result untouched.

The frames go through the frame store every video mode shares (``store``): saved atomically as
they finish, with the settings, resumed by re-running the same command. Frame ``n`` is made
from input frames ``n - 1`` and ``n`` (decoded again on a resumed run) and from dreamed frame
``n - 1`` as its PNG holds it, with jitter seeded by (seed, n), so a resumed clip is the same
bytes as one made in one go.

Timing is kept exactly: each output frame carries its input frame's presentation time, so a
variable-frame-rate clip stays in sync with its sound, which is remuxed (never re-encoded).
"""

from __future__ import annotations

import argparse
import io
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..cli.args import number, whole_number
from ..errors import DreamError, Notify
from ..image_io import is_still_demuxer, limited_size
from .encoding import H264_CONTAINERS, Timing
from .flow import FLOW_METHODS, Coherence, carry
from .modes import Video, VideoJob, VideoMode, frame_max_size, given
from ..outputs import file_sha256
from .store import Dream, Resume, frame_rng
from .zoom import Motion   # --blend means what it means in the zoom video, and is checked there



@dataclass(frozen=True)
class Clip:
    """The part of a video that gets dreamed, as probed before any dreaming."""

    path: Path
    size: tuple[int, int]          # (width, height) of the frames as dreamed: upright, within --max-size
    rotation: int                  # display rotation, degrees counter-clockwise (a multiple of 90)
    time_base: Fraction
    pts: tuple[int, ...]           # presentation times of the frames dreamed, in time_base
    origin: int                    # presentation time of the clip's first frame (--start counts from it)
    rate: Fraction                 # the stream's nominal frame rate
    audio: tuple[int, ...]         # indices of the audio streams
    start: float                   # seconds from the clip's first frame to the first frame dreamed
    end: float | None              # --end, seconds (None: to the end)

    @property
    def frame_count(self) -> int:
        return len(self.pts)

    def timing(self) -> Timing:
        """The output's timestamps: the input's, counted from the first frame dreamed."""
        first = self.pts[0]
        return Timing(self.time_base, tuple(p - first for p in self.pts), self.rate)


def _open(path: Path) -> Any:
    import av

    if path.is_file() and path.stat().st_size == 0:
        raise DreamError(f"video '{path}' is an empty file (0 bytes); give an MP4, MOV, MKV or WebM file")
    try:
        return av.open(str(path))
    except av.error.FFmpegError as exc:
        raise DreamError(f"cannot read video '{path}': not a video FFmpeg knows ({_reason(exc)}); "
                         "give an MP4, MOV, MKV or WebM file") from None


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc).rstrip(".")


def _video_stream(container: Any, path: Path) -> Any:
    if is_still_demuxer(container.format.name):
        raise DreamError(f"'{path}' is a still image, not a video; dream it with dream.py, or use it as the zoom "
                         "video's --input")
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["nothing"]
        raise DreamError(f"'{path}' has no video stream (it holds {', '.join(kinds)}); give a video file")
    return container.streams.video[0]


def upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a display rotation (counter-clockwise degrees, as PyAV reports it) to decoded pixels."""
    return np.ascontiguousarray(np.rot90(rgb, k=(rotation // 90) % 4))


def open_clip(path: str | Path, *, start: float | None = None, end: float | None = None,
              max_size: int) -> Clip:
    """Probe ``path``: the frames in [start, end), their size, rotation and times. Raises DreamError
    for anything that would stop the dream later (not a video, no video stream, a stream that
    does not decode, --start past the end)."""
    import av

    path = Path(path)
    if not path.exists():
        raise DreamError(f"video '{path}' not found; check the path")
    if path.is_dir():
        raise DreamError(f"video '{path}' is a folder; give a video file")
    with _open(path) as container:
        stream = _video_stream(container, path)
        codec = stream.codec_context.name if stream.codec_context is not None else "unknown"
        try:
            first = next(container.decode(stream), None)
        except (av.error.FFmpegError, ValueError) as exc:
            first, error = None, _reason(exc)
        else:
            error = "no frame decoded"
        if first is None:
            raise DreamError(f"cannot decode the video stream of '{path}' (codec {codec}: {error}): the file is "
                             f"damaged or its codec unsupported; re-encode it, e.g. ffmpeg -i '{path}' -c:v libx264 "
                             "clip.mp4")
        rotation = int(round((first.rotation or 0) / 90.0)) * 90
        coded = (first.width, first.height)
        audio = tuple(s.index for s in container.streams.audio)
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    shown = coded if rotation % 180 == 0 else (coded[1], coded[0])
    size = limited_size(shown[0], shown[1], max_size)
    with _open(path) as container:
        stream = container.streams.video[0]
        time_base = stream.time_base
        every = sorted({p.pts for p in container.demux(stream) if p.pts is not None})
    if not every:
        raise DreamError(f"cannot read the frames' timestamps in '{path}'; remux it, e.g. ffmpeg -i '{path}' -c copy "
                         "clip.mkv")
    zero = every[0]
    seconds = [float((p - zero) * time_base) for p in every]
    lo = start or 0.0
    hi = math.inf if end is None else end
    chosen = tuple(p for p, t in zip(every, seconds) if lo <= t < hi)
    if not chosen:
        if lo > 0 and lo >= seconds[-1]:
            raise DreamError(f"--start {lo:g} is past the end of '{path}' (its last frame is at {seconds[-1]:.3f} s)")
        raise DreamError(f"no frame of '{path}' lies between --start {lo:g} and --end {hi:g} seconds")
    return Clip(path=path, size=size, rotation=rotation, time_base=time_base, pts=chosen, origin=zero,
                rate=Fraction(rate),
                audio=audio, start=float((chosen[0] - zero) * time_base), end=end)


def decoded_frames(clip: Clip, first: int = 0) -> Iterator[np.ndarray]:
    """The clip's chosen frames from ``first`` on, in order: uint8 RGB (H, W, 3), upright, at ``clip.size``.

    FFmpeg's scaler resizes before the pixels reach numpy, so an HD frame costs only the memory
    of its dream-sized copy. From a later frame the decoder starts at the key frame before it (a
    chunk of a long clip), which decodes the same pixels as a decoder that ran from the start.
    """
    wanted = clip.pts[first:]
    seek = first > 0
    while True:
        frames = _decode(clip, wanted, seek)
        head = next(frames, None)
        if head is None and seek:  # the demuxer landed past the frame: decode from the start instead
            seek = False
            continue
        if head is not None:
            yield head
            yield from frames
        return


def _decode(clip: Clip, wanted: Sequence[int], seek: bool) -> Iterator[np.ndarray]:
    import av

    chosen = set(wanted)
    skipped = clip.frame_count - len(wanted)
    width, height = clip.size if clip.rotation % 180 == 0 else (clip.size[1], clip.size[0])
    with _open(clip.path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if seek:
            container.seek(wanted[0], stream=stream, backward=True, any_frame=False)
        count = 0
        try:
            for frame in container.decode(stream):
                if frame.pts is None or frame.pts < wanted[0]:
                    continue
                if seek and count == 0 and frame.pts != wanted[0]:
                    return  # landed past the first frame wanted: the caller decodes from the start
                if frame.pts not in chosen:
                    continue
                rgb = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")
                yield upright(rgb, clip.rotation)
                count += 1
                if count == len(wanted):
                    return
        except av.error.FFmpegError as exc:
            raise DreamError(f"cannot decode frame {skipped + count} of '{clip.path}' ({_reason(exc)}); the file is "
                             "damaged, or use --end to stop before it") from None
    raise DreamError(f"'{clip.path}' decoded to {skipped + count} frames, not the {clip.frame_count} its packets "
                     "promise; remux it (ffmpeg -i IN -c copy OUT.mkv) and try again")


def as_float(frame: np.ndarray) -> np.ndarray:
    """A decoded uint8 frame as the dream takes it: float32 RGB in [0, 1]."""
    return frame.astype(np.float32) / 255.0


def read_frames(clip: Clip, first: int = 0) -> Iterator[np.ndarray]:
    """``decoded_frames`` as float32 RGB in [0, 1]."""
    return (as_float(frame) for frame in decoded_frames(clip, first))


def clip_frame(index: int, current: np.ndarray, previous_input: np.ndarray | None,
               previous_dream: np.ndarray | None, coherence: Coherence, blend: float, dream: Dream,
               seed: int) -> np.ndarray:
    """Frame ``index`` of the dreamed clip from its input frame and, when there is one, the input and
    the dream (as saved) of the frame before it.

    ``start = carry(...)`` (or the input frame alone: the first frame of a run, ``--no-flow``, a
    scene cut), then ``frame = blend * start + (1 - blend) * dream(start)``: ``--blend`` means what
    it means in the zoom video (the share of the undreamed start kept). The jitter is seeded by
    (seed, index), so a frame depends on nothing but these.
    """
    carried = None
    if previous_input is not None and previous_dream is not None and not coherence.no_flow:
        carried = carry(previous_input, previous_dream, current, coherence)
    start = current if carried is None else carried.start
    if blend == 1.0:  # nothing of the dream would be kept
        return start
    dreamed = dream(start, frame_rng(seed, index))
    return start + (1.0 - blend) * coherence.strength(carried) * (dreamed - start)


def clip_record(clip: Clip, coherence: Coherence, blend: float, warmup: int) -> dict[str, object]:
    """The frame-making settings a resumed run must repeat (named like their flags)."""
    return {"start": clip.start, "end": clip.end, "blend": blend, **asdict(coherence), "chunk_warmup": warmup}


# -- sound ---------------------------------------------------------------------------------------------

class AudioCopy:
    """The clip's audio streams, copied packet by packet into the output (no re-encoding).

    Packets are shifted with the video so that the first frame dreamed is time zero; with
    --start or --end, packets outside [first frame, --end) are left out (the cut falls on a
    packet boundary, a few tens of milliseconds at most). Use as ``encode_video``'s ``extra``.
    """

    def __init__(self, clip: Clip) -> None:
        self.clip = clip

    @contextmanager
    def __call__(self, container: Any) -> Iterator[Iterator[tuple[float, Any]]]:
        with _open(self.clip.path) as source:
            outputs = {i: container.add_stream_from_template(source.streams[i]) for i in self.clip.audio}
            yield self._packets(source, outputs)

    def _packets(self, source: Any, outputs: dict[int, Any]) -> Iterator[tuple[float, Any]]:
        clip = self.clip
        video_tb = source.streams.video[0].time_base
        zero = clip.pts[0] * video_tb      # the first frame dreamed, seconds
        origin = clip.origin * video_tb    # the clip's first frame, where --start/--end count from
        for packet in source.demux(*(source.streams[i] for i in outputs)):
            if packet.pts is None:  # the demuxer's end-of-stream marker
                continue
            tb = packet.time_base
            time = packet.pts * tb
            if (clip.start > 0 and time < zero) or (clip.end is not None and time - origin >= clip.end):
                continue
            shift = round(zero / tb)
            packet.pts -= shift
            if packet.dts is not None:
                packet.dts -= shift
            packet.stream = outputs[packet.stream.index]
            yield float(time - zero), packet


def check_audio_fits(clip: Clip, output: Path, container_format: str) -> None:
    """Fail before dreaming if ``output``'s container cannot hold the clip's audio codec."""
    if not clip.audio:
        return
    import av

    with _open(clip.path) as source:
        for index in clip.audio:
            stream = source.streams[index]
            try:
                with av.open(io.BytesIO(), mode="w", format=container_format) as probe:
                    probe.add_stream_from_template(stream)
                    probe.start_encoding()
            except (av.error.FFmpegError, ValueError) as exc:
                name = stream.codec_context.name if stream.codec_context is not None else "unknown"
                raise DreamError(f"'{output}' cannot hold the sound of '{clip.path}' ({name} audio: {_reason(exc)}); "
                                 "write .mkv instead, or add --no-audio") from None


# -- the mode ------------------------------------------------------------------------------------------

#: Frames a chunk that starts mid-scene dreams before its first frame, which the video dissolves into
#: from the earlier chunk (--chunk-warmup's default; benchmarks/scale_out.py measures the border).
CHUNK_WARMUP = 8


@dataclass(frozen=True)
class ClipSettings:
    """How a clip's frames are made: the flow's coherence, ``--blend``, and ``--chunk-warmup`` for chunks."""

    coherence: Coherence
    blend: float
    warmup: int = CHUNK_WARMUP


class ClipMode(VideoMode):
    """Every frame of ``--video``, dreamed along the optical flow, with its sound and timing."""

    title = "clip (--video)"
    noun = "dreaming a clip"
    chooser = "video"
    choose_hint = "--video CLIP"
    splits = True

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        clip = Coherence()
        group.add_argument("--video", metavar="PATH",
                           help="a video to dream frame by frame (MP4, MOV, MKV, WebM...: whatever FFmpeg reads), at "
                                "--max-size, with its sound and timing")
        group.add_argument("--start", type=number, metavar="SEC", help="dream from this time on (seconds; default 0)")
        group.add_argument("--end", type=number, metavar="SEC", help="stop before this time (seconds; default the end)")
        group.add_argument("--no-flow", action="store_true", default=None,
                           help="dream every frame on its own (flickers: each frame grows its own hallucinations)")
        group.add_argument("--flow-blend", type=number, metavar="B",
                           help=f"share of the previous dreamed frame, moved along the optical flow, blended into the "
                                f"next input frame before it is dreamed (default {clip.flow_blend:g}; higher sticks "
                                "more, lower follows the input more)")
        group.add_argument("--occlusion-blend", type=number, metavar="B",
                           help=f"the same where the flow is unreliable: occluded or uncovered pixels, the border "
                                f"(default {clip.occlusion_blend:g}: the input alone)")
        group.add_argument("--scene-cut", type=number, metavar="D",
                           help=f"a frame differing from the moved previous one by more than D (mean, 0-1) is a scene "
                                f"cut, where the dream restarts from the input (default {clip.scene_cut:g})")
        group.add_argument("--flow-refresh", type=number, metavar="R",
                           help=f"share of a full dream added where the previous dream was carried along (default "
                                f"{clip.flow_refresh:g}; 1 dreams carried frames fully, which flickers more)")
        group.add_argument("--flow-method", choices=FLOW_METHODS, default=None,
                           help=f"OpenCV optical flow (default {clip.flow_method})")
        group.add_argument("--no-audio", action="store_true", default=None, help="leave the clip's sound out")
        group.add_argument("--chunk-warmup", type=whole_number, metavar="N",
                           help=f"under mlx.launch the clip is dreamed in chunks, one or more per rank, cut at scene "
                                f"cuts where it can; a chunk starting mid-scene first dreams the N frames before it, "
                                f"and the video dissolves into it over them (default {CHUNK_WARMUP}; 0: a hard cut)")

    def foreign_flags_hint(self, owner: VideoMode) -> str:
        return ("a --video clip keeps its own frames, size (see --max-size) and frame rate (cut it with "
                "--start/--end)")

    def check_usage(self, args: argparse.Namespace, others: Sequence[VideoMode]) -> None:
        if args.input is not None:
            raise DreamError("--input is the zoom video's start image; with --video the clip's frames are the input, "
                             "drop --input")
        self.refuse_flags_of(others, args)

    def check(self, args: argparse.Namespace) -> ClipSettings:
        for flag, value in (("--start", args.start), ("--end", args.end)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise DreamError(f"{flag} must be a time in seconds from the clip's start, 0 or more (got {value:g})")
        if args.start is not None and args.end is not None and args.end <= args.start:
            raise DreamError(f"--end {args.end:g} is not after --start {args.start:g}; give the part of the clip to "
                             "dream as --start SEC --end SEC")
        blend = Motion(**given(args, ("blend",)))
        blend.validate()
        coherence = Coherence(**given(args, ("flow_blend", "occlusion_blend", "scene_cut", "flow_refresh",
                                             "flow_method")), no_flow=bool(args.no_flow))
        coherence.validate()
        if args.chunk_warmup is not None and args.chunk_warmup < 0:
            raise DreamError(f"--chunk-warmup must be 0 or more frames (got {args.chunk_warmup})")
        warmup = CHUNK_WARMUP if args.chunk_warmup is None else args.chunk_warmup
        return ClipSettings(coherence, blend.blend, warmup)

    def input_path(self, args: argparse.Namespace) -> str | None:
        return args.video

    def open(self, args: argparse.Namespace, checked: ClipSettings) -> Clip:
        """The clip probed: a file that is no video fails before the model loads."""
        return open_clip(args.video, start=args.start, end=args.end, max_size=frame_max_size(args))

    def video(self, args: argparse.Namespace, checked: ClipSettings, clip: Clip, output: Path, resume: Resume,
              notify: Notify) -> Video:
        sound = bool(clip.audio) and not args.no_audio
        if sound and output.suffix.lower() not in H264_CONTAINERS:
            notify(f"{output.suffix} holds no sound; the clip's audio is left out (write .mp4 or .mkv to keep it)")
            sound = False
        if sound:
            check_audio_fits(clip, output, H264_CONTAINERS[output.suffix.lower()])
        return Video(source={"video_sha256": file_sha256(args.video)}, size=clip.size,
                     motion=clip_record(clip, checked.coherence, checked.blend, checked.warmup), frames=None,
                     total=clip.frame_count, timing=clip.timing(), extra=AudioCopy(clip) if sound else None)

    def job(self, args: argparse.Namespace, checked: ClipSettings, notify: Notify) -> VideoJob:
        from .chunks import ClipJob

        return ClipJob(self, args, checked, notify)

"""Encoding the frames into a video: H.264 in MP4 or Matroska (with a clip's sound interleaved by
time), or an animated GIF, each written atomically, with every frame's exact presentation time."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from models.weights import atomic_write

from ..errors import DreamError
from ..image_io import ImageError

#: Video container by extension.
VIDEO_FORMATS = {".mp4": "H.264 MP4", ".mkv": "H.264 Matroska, holds any sound", ".gif": "animated GIF"}
#: FFmpeg's muxer for each H.264 container.
H264_CONTAINERS = {".mp4": "mp4", ".mkv": "matroska"}
#: H.264 quality (constant rate factor; 18 is visually lossless for most content).
H264_CRF = 18
#: x264's frame threads, fixed: by default it counts the CPUs this process may use (a launcher's or
#: a container's affinity changes that), and its output depends on the count.
H264_THREADS = 4
#: x264's instruction sets up to AVX2: its AVX-512 kernels (the macroblock tree's, measured) give
#: another file now and then for the same frames; without them every x86-64 machine, with AVX-512
#: or not, makes the same bytes.
X264_UP_TO_AVX2 = "MMX2,SSE2Fast,SSSE3,SSE4.2,AVX,FMA3,BMI2,AVX2"


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


@dataclass(frozen=True)
class Dissolve:
    """A frame shown as a mix of two: ``(1 - weight) * own + weight * next`` (a clip's chunk border)."""

    own: Path
    next: Path
    weight: float


#: What a video frame is read from: a frame file, or a dissolve of two.
FrameSource = Path | Dissolve


def read_frame_file(path: Path) -> np.ndarray:
    """A saved frame as uint8 RGB, or the one-line reason it cannot be read."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot read frame '{path}' ({exc}); delete it (it is made again) or add --restart") from None


def has_avx512() -> bool:
    """Whether this CPU has AVX-512 (numpy's runtime detection; False where it cannot tell)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:
        return False
    return bool(__cpu_features__.get("AVX512F"))


def x264_params() -> str:
    """x264 settings that make its output depend on the frames alone (see H264_THREADS, X264_UP_TO_AVX2)."""
    params = f"threads={H264_THREADS}"
    return f"{params}:asm={X264_UP_TO_AVX2}" if has_avx512() else params


def _read_frame(source: FrameSource) -> np.ndarray:
    if isinstance(source, Path):
        return read_frame_file(source)
    own, other = read_frame_file(source.own).astype(np.float32), read_frame_file(source.next).astype(np.float32)
    return np.clip((1.0 - source.weight) * own + source.weight * other + 0.5, 0, 255).astype(np.uint8)


def encode_h264(frames: Sequence[FrameSource], output: Path, timing: Timing, extra: ExtraStreams | None = None) -> None:
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
            # The same frames make the same file: a resumed video is the uninterrupted one, byte for byte.
            stream.options = {"crf": str(H264_CRF), "x264-params": x264_params()}
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
                        raise DreamError(f"frame '{getattr(path, 'own', path)}' is {rgb.shape[1]}x{rgb.shape[0]}, not "
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


def encode_gif(frames: Sequence[FrameSource], output: Path, timing: Timing) -> None:
    """Animated GIF (Pillow; an adaptive 256-colour palette per frame), looping forever, no sound."""
    images = [Image.fromarray(_read_frame(path)) for path in frames]
    durations = timing.durations_ms()

    def write(tmp: str) -> None:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)

    atomic_write(output, write)


def encode_video(frames: Sequence[FrameSource], output: Path, timing: Timing, extra: ExtraStreams | None = None) -> None:
    if not frames:
        raise DreamError("no frames to encode")
    try:
        if output.suffix.lower() == ".gif":
            encode_gif(frames, output, timing)
        else:
            encode_h264(frames, output, timing, extra)
    except OSError as exc:
        raise DreamError(f"cannot write '{output}' ({exc.strerror or exc}); choose another --output") from None

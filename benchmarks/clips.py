"""Clips of known motion, made with PyAV: what the clip tests and benchmarks/video_clip.py dream.

A camera panning across assets/chelsea.png by a whole number of pixels per frame, so that
where every pixel went is known exactly; optionally with a sine tone, a display rotation,
or irregular (variable-frame-rate) timestamps.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PAN = 4          # pixels per frame
FPS = 12
SAMPLE_RATE = 16000
#: Samples in [-1, 1] as each audio sample format stores them.
SAMPLES = {"fltp": lambda x: x.astype(np.float32), "flt": lambda x: x.astype(np.float32),
           "s16": lambda x: np.round(x * 32767).astype(np.int16),
           "u8": lambda x: np.round((x + 1) * 127.5).astype(np.uint8)}


def photo_strip(height: int, width: int) -> np.ndarray:
    """assets/chelsea.png scaled so that ``height`` rows of it are ``width`` or more pixels wide (uint8)."""
    src = Image.open(ROOT / "assets" / "chelsea.png").convert("RGB")
    scale = max((height + 24) / src.height, width / src.width)
    big = src.resize((round(src.width * scale), round(src.height * scale)), Image.Resampling.LANCZOS)
    top = (big.height - height) // 2
    return np.asarray(big)[top:top + height]


def write_clip(path: Path, frames: list[np.ndarray], *, fps: int = FPS, pts: list[int] | None = None,
               time_base: Fraction | None = None, rotation: int = 0, audio: str | None = "aac",
               audio_seconds: float | None = None, codec: str = "libx264", pix_fmt: str = "yuv420p") -> Path:
    """Encode ``frames`` (uint8 RGB) in ``codec`` (nearly lossless), with a sine tone in ``audio`` codec."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = pix_fmt
        stream.options = {"crf": "12"} if codec in ("libx264", "libx265", "libvpx-vp9") else {}
        if time_base is not None:
            stream.time_base = stream.codec_context.time_base = time_base
        if rotation:
            stream.set_display_rotation(rotation)
        sound = container.add_stream(audio, rate=SAMPLE_RATE) if audio else None
        if sound is not None:
            sound.layout = "mono"
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            seconds = audio_seconds if audio_seconds is not None else len(frames) / fps
            n = int(SAMPLE_RATE * seconds)
            tone = 0.3 * np.sin(np.arange(n) * 2 * np.pi * 440 / SAMPLE_RATE)
            fmt = sound.codec_context.format.name
            chunk = sound.codec_context.frame_size or 1024
            for k in range(0, n, chunk):
                part = tone[k:k + chunk]
                data = SAMPLES[fmt](part)[None]
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout="mono")
                frame.sample_rate, frame.pts = SAMPLE_RATE, k
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return path


def pan_frames(count: int = 16, width: int = 256, height: int = 192, step: int = PAN) -> list[np.ndarray]:
    """A camera panning right: the photo moves ``step`` px to the left each frame."""
    strip = photo_strip(height, width + step * (count - 1))
    return [strip[:, step * t:step * t + width] for t in range(count)]

"""Loading and saving images: float32 RGB (H, W, 3) in [0, 1] inside, any Pillow format outside."""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from models.weights import atomic_write

from .errors import DreamError

#: JPEG quality of saved dreams: high, since DeepDream's fine textures suffer from compression.
JPEG_QUALITY = 95
#: Transparent regions are composited onto this colour (white, as viewers show them).
BACKGROUND = (255, 255, 255)


class ImageError(DreamError):
    """An image that cannot be read or written; the message names the file and the fix."""


def flatten_alpha(img: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Composite transparency (alpha channel or a palette's transparent index) onto ``background``."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, background + (255,)), rgba)
    return img


#: Pillow modes of 16-bit and 32-bit greyscale (16-bit PNG and TIFF open as one of these).
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _high_depth_grey(img: Image.Image) -> np.ndarray:
    """A 16-bit, 32-bit integer or float greyscale image -> float64 in [0, 1].

    The one rule for deep images: integer data is 16-bit data (full scale 65535, whatever its
    brightest pixel, so a dark 16-bit image stays dark); a 32-bit image whose values exceed
    16 bits is scaled by its own maximum; float data is taken as [0, 1] unless it exceeds 1.
    """
    grey = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        top = grey.max(initial=0.0)
        top = top if top > 1.0 else 1.0
    else:
        top = max(65535.0, float(grey.max(initial=0.0)))
    return np.clip(grey / top, 0.0, 1.0)


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> float32 RGB in [0, 1]: alpha composited on white, 16-bit and float scaled."""
    if img.mode in HIGH_DEPTH_MODES:
        return np.repeat(_high_depth_grey(img)[..., None], 3, axis=2).astype(np.float32)
    return np.asarray(flatten_alpha(img).convert("RGB"), dtype=np.float32) / 255.0


def to_rgb(img: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (the datasets' decoder), with the same rules as ``load_image``:
    16-bit and float scaled (Pillow's own convert would clip them at 255), alpha composited."""
    if img.mode in HIGH_DEPTH_MODES:
        img = Image.fromarray(to_uint8(_high_depth_grey(img)), "L")
    img = flatten_alpha(img, background)
    return img.convert("RGB") if img.mode != "RGB" else img


@contextmanager
def _opened(path: Path, data: bytes | None, what: str) -> Iterator[Image.Image]:
    """``path`` opened by Pillow (from ``data``, its bytes, when given: a rank without the file),
    or the one-line reason it cannot be; Pillow decodes lazily, so what fails while the image is
    open (in the ``with`` block) gets the same reasons."""
    if data is None:
        if not path.exists():
            raise ImageError(f"{what} '{path}' not found; check the path")
        if path.is_dir():
            raise ImageError(f"{what} '{path}' is a folder; give an image file")
        if path.stat().st_size == 0:
            raise ImageError(f"{what} '{path}' is an empty file (0 bytes); give a valid image file")
    elif not data:
        raise ImageError(f"{what} '{path}' is an empty file (0 bytes); give a valid image file")
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as img:
            yield img
    except ImageError:
        raise
    except UnidentifiedImageError:
        if data is None and is_video(path):
            raise ImageError(f"{what} '{path}' is a video, not an image; dream its frames with "
                             f"`python dream_video.py --video {path}`") from None
        raise ImageError(f"cannot read {what} '{path}': not an image format Pillow knows; convert it to PNG or JPEG") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{what} '{path}' is too large to open safely ({exc}); downscale it first") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot read {what} '{path}': the file is corrupt or truncated ({exc})") from None


def load_image(path: str | os.PathLike, max_size: int | None = None, what: str = "input image",
               data: bytes | None = None) -> np.ndarray:
    """Read ``path`` as float32 RGB (H, W, 3) in [0, 1], EXIF orientation applied.

    ``max_size`` downscales (never upscales) so the longest side is at most that many pixels;
    ``what`` names the file's role in error messages ("guide image", ...); ``data``, the file's
    bytes, is read instead of the file (another rank sent them), errors still naming ``path``.
    """
    path = Path(path)
    with _opened(path, data, what) as img:
        img = ImageOps.exif_transpose(img)  # phones store rotation in EXIF, not in the pixels
        img.load()
        rgb = _to_rgb_array(img)
    if max_size is not None:
        rgb = limit_size(rgb, max_size)
    return rgb


#: FFmpeg's demuxers of still images: a PNG or JPEG opens as a one-frame "video".
IMAGE_DEMUXERS = ("image2", "_pipe")


def is_still_demuxer(name: str) -> bool:
    """Whether FFmpeg's demuxer ``name`` is one of still images (``IMAGE_DEMUXERS``)."""
    return name == IMAGE_DEMUXERS[0] or name.endswith(IMAGE_DEMUXERS[1])


def is_video(path: str | os.PathLike) -> bool:
    """Whether FFmpeg reads ``path`` as a video (a stream of frames, not a still image), judged by
    the file's content: a clip named .png is one, a text file named .mp4 is not."""
    import av

    try:
        with av.open(str(path)) as container:
            return bool(container.streams.video) and not is_still_demuxer(container.format.name)
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError):
        return False


#: EXIF orientations that turn the picture a quarter (width and height swap once applied).
_QUARTER_TURNS = (5, 6, 7, 8)


def probe_image(path: str | os.PathLike, what: str = "input image") -> tuple[int, int]:
    """(width, height) of ``path`` as ``load_image`` would return it (EXIF rotation applied), from its
    header alone; the same one-line errors for a missing, empty or unreadable file."""
    path = Path(path)
    with _opened(path, None, what) as img:
        width, height = img.size
        try:
            turned = img.getexif().get(0x0112) in _QUARTER_TURNS
        except (OSError, SyntaxError, ValueError):
            turned = False
    return (height, width) if turned else (width, height)


def limit_size(rgb: np.ndarray, max_size: int) -> np.ndarray:
    """Downscale (Lanczos) so the longest side is at most ``max_size``; smaller images are returned unchanged."""
    h, w = rgb.shape[:2]
    size = limited_size(w, h, max_size)
    if size == (w, h):
        return rgb
    small = Image.fromarray(to_uint8(rgb)).resize(size, Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.float32) / 255.0


def limited_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """(width, height) scaled down so the longest side is at most ``max_size`` (never up)."""
    longest = max(width, height)
    if longest <= max_size:
        return width, height
    ratio = max_size / longest
    return max(1, round(width * ratio)), max(1, round(height * ratio))


def noise_image(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """The start image when there is no input: mid grey with faint uniform noise (the 2015 notebook's
    ``img_noise``), so the dream builds its own structures instead of amplifying a photo's."""
    return (0.5 + 0.1 * (rng.random((height, width, 3)) - 0.5)).astype(np.float32)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _pillow_format(path: Path) -> str:
    ext = path.suffix.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise ImageError(f"cannot write '{path}': unknown image extension '{ext or '(none)'}'; use .png or .jpg")
    return fmt


def check_output_path(path: str | os.PathLike, input_path: str | os.PathLike | None = None) -> Path:
    """Fail early (before any dreaming) if ``path`` cannot be written; return it as a Path.

    Checks: a known image extension, not the input file, not a folder, and a writable
    destination folder (the nearest existing ancestor, since missing folders are created).
    """
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"output '{path}' is a folder; give a file name such as {path / 'dream.png'}")
    _pillow_format(path)
    if input_path is not None and path.exists() and Path(input_path).exists() \
            and os.path.samefile(path, input_path):
        raise ImageError(f"output '{path}' is the input image; choose another --output (the input is never overwritten)")
    check_writable_folder(path.parent)
    if path.exists() and not os.access(path, os.W_OK):
        raise ImageError(f"cannot write '{path}': the file is read-only; choose another --output")
    return path


def check_writable_folder(folder: str | os.PathLike) -> None:
    """Raise ImageError unless files can be created in ``folder`` (created if missing).

    Probing with a real temporary file is the only reliable test (permissions, read-only
    mounts, /proc, running as root all defeat ``os.access``).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except FileExistsError:
        raise ImageError(f"cannot write into '{folder}': a file is in the way of that folder; "
                         "choose another --output") from None
    except OSError as exc:
        raise ImageError(f"cannot write into '{folder}' ({exc.strerror or exc}); choose another --output") from None


#: The key under which an output carries its record (what made it; see deepdream/outputs.py).
RECORD_KEY = "deepdream"
#: Formats whose files can carry that record, and how each stores text.
RECORD_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF")
_TIFF_DESCRIPTION = 270


def encode_image(rgb: np.ndarray, path: str | os.PathLike, record: dict[str, Any] | None = None) -> bytes:
    """Float RGB [0, 1] as 8-bit file bytes in ``path``'s format, carrying ``record`` (JSON) where the
    format has room for text (PNG, JPEG, WebP, TIFF). The same input gives the same bytes on any rank."""
    path = Path(path)
    fmt = _pillow_format(path)
    img = Image.fromarray(to_uint8(rgb))
    options: dict[str, Any] = {"quality": JPEG_QUALITY} if fmt == "JPEG" else {}
    if record is not None and fmt in RECORD_FORMATS:
        text = json.dumps(record, sort_keys=True)
        if fmt == "PNG":
            info = PngImagePlugin.PngInfo()
            info.add_text(RECORD_KEY, text)
            options["pnginfo"] = info
        elif fmt == "JPEG":
            options["comment"] = f"{RECORD_KEY} {text}"
        elif fmt == "WEBP":
            options["xmp"] = f"{RECORD_KEY} {text}".encode()
        else:
            options["tiffinfo"] = {_TIFF_DESCRIPTION: f"{RECORD_KEY} {text}"}
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def read_image_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record an output carries (``encode_image``), or None: not one of ours, or unreadable."""
    try:
        with Image.open(path) as img:
            if img.format == "PNG":
                text = img.info.get(RECORD_KEY)
            else:
                raw = img.info.get("comment") or img.info.get("xmp")
                if raw is None and img.format == "TIFF":
                    raw = img.tag_v2.get(_TIFF_DESCRIPTION)
                raw = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
                text = raw[len(RECORD_KEY) + 1:] if isinstance(raw, str) and raw.startswith(RECORD_KEY + " ") else None
        record = json.loads(text) if text else None
    except (OSError, SyntaxError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write a finished file's bytes atomically (a crash or Ctrl-C never leaves half a file)."""
    path = Path(path)

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(data)

    try:
        atomic_write(path, write)
    except OSError as exc:
        raise ImageError(f"cannot write '{path}' ({exc.strerror or exc}); choose another --output") from None
    return path


def save_image(path: str | os.PathLike, rgb: np.ndarray, record: dict[str, Any] | None = None) -> Path:
    """Write float RGB [0, 1] as 8-bit, atomically, with ``record`` where the format holds one."""
    return write_bytes(path, encode_image(rgb, path, record))


def output_suffix(input_path: str | os.PathLike | None) -> str:
    """The extension of a dream of ``input_path``: the input's own where its format carries the record
    of what made the dream (``RECORD_FORMATS``), else ``.png`` (a GIF would also quantise it)."""
    ext = Path(input_path).suffix.lower() if input_path is not None else ".png"
    return ext if Image.registered_extensions().get(ext) in RECORD_FORMATS else ".png"

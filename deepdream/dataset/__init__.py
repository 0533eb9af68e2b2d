"""Image datasets for prepare_dataset.py, calc_cm.py and train_dream.py (and ``duplicates``: the
exact and near-duplicate checks of prepare_dataset.py).

An *ImageFolder* is ``root/<class name>/**/<image>`` (torchvision's convention): every
sub-folder of ``root`` is a class, and every file Pillow can open below it is an image of
that class. Everything here is numpy + Pillow; MLX only sees the finished batches.

Reproducibility: nothing in this module keeps random state. Every random choice takes its
generator from ``(seed, epoch, ...)`` so a resumed run can regenerate epoch ``e`` exactly
from its number alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DreamError
from ..image_io import to_rgb

#: The calibration view of an image (the view the network sees): short side 256, centre crop 224.
CALIBRATION_SHORT_SIDE = 256
CALIBRATION_CROP = 224


class DatasetError(DreamError):
    """A dataset the tools cannot use; the one-line message says what is wrong and what to do."""


# -- finding images ----------------------------------------------------------------------

@lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """Lower-case file extensions of every format this Pillow build can *open*."""
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in image_extensions() and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Every image file below ``folder`` (recursive, sorted, hidden files and folders skipped)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if is_image_file(path):
                found.append(path)
    return found


def check_folder(root: str | os.PathLike, what: str = "dataset folder") -> Path:
    """``root`` as a Path, or DatasetError when it is missing or not a folder."""
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"{what} {path} does not exist; pass the folder that holds one sub-folder per class")
    if not path.is_dir():
        raise DatasetError(f"{what} {path} is a file, not a folder; pass the folder that holds one sub-folder per class")
    return path


@dataclass(frozen=True)
class ImageFolder:
    """The images of an ImageFolder: ``paths[i]`` has label ``labels[i]``, a class index into ``classes``."""

    root: Path
    classes: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        counts = np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, counts)}


def scan_image_folder(root: str | os.PathLike, min_classes: int = 1, allow_empty_classes: bool = False) -> ImageFolder:
    """Scan ``root/<class>/**`` into an ImageFolder; raise DatasetError for unusable layouts.

    Class folders are sorted by name (class index = position), like torchvision's ImageFolder.
    """
    root = check_folder(root)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        loose = [p for p in root.iterdir() if is_image_file(p)]
        if loose:
            raise DatasetError(
                f"{root} holds {len(loose)} images but no class folders; put each class's images in {root}/<class name>/")
        raise DatasetError(f"dataset folder {root} is empty; put each class's images in {root}/<class name>/")
    paths: list[Path] = []
    labels: list[int] = []
    empty: list[str] = []
    for label, class_dir in enumerate(class_dirs):
        images = list_images(class_dir)
        if not images:
            empty.append(class_dir.name)
        paths += images
        labels += [label] * len(images)
    if empty and not allow_empty_classes:
        raise DatasetError(
            f"class folder(s) with no images in {root}: {', '.join(empty)}; add images or remove the folder(s)")
    if len(class_dirs) < min_classes:
        raise DatasetError(
            f"{root} has {len(class_dirs)} class folder(s) ({', '.join(d.name for d in class_dirs)}); "
            f"need at least {min_classes}: one sub-folder of images per class")
    if not paths:
        raise DatasetError(f"no images found in {root}; supported formats: any Pillow can open (.jpg, .png, ...)")
    return ImageFolder(root, tuple(d.name for d in class_dirs), tuple(paths), tuple(labels))


def scan_images(root: str | os.PathLike) -> list[Path]:
    """All images of an ImageFolder *or* a flat folder (calc_cm.py accepts either)."""
    root = check_folder(root, "image folder")
    images = list_images(root)
    if not images:
        raise DatasetError(f"no images found in {root}; supported formats: any Pillow can open (.jpg, .png, ...)")
    return images


# -- decoding ----------------------------------------------------------------------------

def open_rgb(path: str | os.PathLike, min_side: int | None = None) -> Image.Image:
    """Decode an image file to upright 8-bit RGB.

    ``min_side`` lets the JPEG decoder skip resolution we would throw away (DCT scaling keeps
    both sides >= ``min_side``); it is the main cost saving when training on large photos.
    """
    try:
        opened = Image.open(path)
    except UnidentifiedImageError:
        if os.path.getsize(path) == 0:       # Pillow's own message names no cause
            raise ValueError("empty file (0 bytes)") from None
        raise
    with opened as img:
        if min_side and img.format == "JPEG":
            img.draft("RGB", (min_side, min_side))
        img = ImageOps.exif_transpose(img)
        img.load()
    return to_rgb(img)


def resize_short_side(img: Image.Image, short_side: int, upscale: bool = True) -> Image.Image:
    w, h = img.size
    scale = short_side / min(w, h)
    if scale >= 1 and not upscale:
        return img
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img if size == img.size else img.resize(size, Image.Resampling.BILINEAR)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_array(img: Image.Image) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]."""
    return np.asarray(img, dtype=np.float32) / 255.0


def calibration_view(path: str | os.PathLike) -> np.ndarray:
    """The view of an image used for colour statistics: short side 256, centre crop 224, [0, 1]."""
    img = resize_short_side(open_rgb(path, CALIBRATION_SHORT_SIDE), CALIBRATION_SHORT_SIDE)
    return to_array(center_crop(img, CALIBRATION_CROP))


class ChannelStats:
    """Per-channel mean/std over every pixel of every image added (float64 sums, one pass)."""

    def __init__(self) -> None:
        self.count = 0
        self.total = np.zeros(3)
        self.total_sq = np.zeros(3)

    def add(self, rgb: np.ndarray) -> None:
        pixels = rgb.reshape(-1, 3).astype(np.float64)
        self.count += len(pixels)
        self.total += pixels.sum(axis=0)
        self.total_sq += np.square(pixels).sum(axis=0)

    @property
    def mean(self) -> list[float]:
        return [float(v) for v in self.total / max(self.count, 1)]

    @property
    def std(self) -> list[float]:
        mean = self.total / max(self.count, 1)
        var = np.maximum(self.total_sq / max(self.count, 1) - mean**2, 0.0)
        return [float(v) for v in np.sqrt(var)]


# -- augmentation ------------------------------------------------------------------------

def eval_view(img: Image.Image, size: int) -> np.ndarray:
    """Validation view at ``size``: short side to size*256/224, centre crop (torchvision's eval recipe)."""
    short = max(size, round(size * CALIBRATION_SHORT_SIDE / CALIBRATION_CROP))
    w, h = img.size
    scale = short / min(w, h)
    cw, ch = size / scale, size / scale  # the crop in source pixels
    left, top = (w - cw) / 2, (h - ch) / 2
    return to_array(img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch)))


def train_view(img: Image.Image, size: int, rng: np.random.Generator,
               scale: tuple[float, float] = (0.25, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
               flip: bool = True) -> np.ndarray:
    """torchvision's RandomResizedCrop + RandomHorizontalFlip, drawn from ``rng``.

    The crop is resized in the same call (Pillow's ``box``) so no intermediate image is made.
    """
    w, h = img.size
    area = w * h
    box = None
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if 0 < cw <= w and 0 < ch <= h:
            left, top = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
            box = (left, top, left + cw, top + ch)
            break
    if box is None:  # torchvision's fallback: the central crop with the aspect ratio clamped
        aspect = w / h
        cw, ch = (w, w / ratio[0]) if aspect < ratio[0] else (h * ratio[1], h) if aspect > ratio[1] else (w, h)
        cw, ch = min(cw, w), min(ch, h)
        box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
    out = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if flip and rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_array(out)


# -- splits and sampling -----------------------------------------------------------------

def _rng(*key: int) -> np.random.Generator:
    """A generator determined by a tuple of non-negative integers (seed, epoch, ...)."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices): each class contributes round(n * fraction) images to val.

    A class with at least 2 images gives at least 1 to val (when fraction > 0) and always
    keeps at least 1 for training, so every class is both learned and measured.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"--val-split must be in [0, 1) (got {val_fraction}); e.g. 0.2 keeps 20% for validation")
    labels_arr = np.asarray(labels)
    train, val = [], []
    for label in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == label)
        idx = idx[_rng(seed, 0xDA7A, int(label)).permutation(len(idx))]
        n_val = round(len(idx) * val_fraction)
        if val_fraction > 0 and len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def epoch_order(indices: np.ndarray, labels: Sequence[int], seed: int, epoch: int, balanced: bool) -> np.ndarray:
    """The sample order of one epoch: a permutation, or (``balanced``) a class-balanced draw.

    Balanced: each sample is drawn with probability proportional to 1/size(its class), with
    replacement, as many draws as there are samples, so every class is seen equally often.
    """
    rng = _rng(seed, epoch, 0x5A3B1E)
    if not balanced:
        return indices[rng.permutation(len(indices))]
    labels_arr = np.asarray(labels)[indices]
    counts = np.bincount(labels_arr)
    weights = 1.0 / counts[labels_arr]
    return rng.choice(indices, size=len(indices), replace=True, p=weights / weights.sum())


def fill_batches(order: np.ndarray, batch_size: int) -> np.ndarray:
    """Extend ``order`` with its own start so every batch is full.

    A compiled training step is traced once per input shape (and the first trace on a fresh
    machine JIT-compiles its kernels); a ragged last batch would cost a second trace. Every
    image is still seen each epoch, a few of them twice.
    """
    short = -len(order) % batch_size
    return np.concatenate([order, np.resize(order, short)]) if short else order


@dataclass(frozen=True)
class Augment:
    """How training views are made: output side, smallest crop area fraction, horizontal flips."""

    size: int
    min_scale: float = 0.25
    flip: bool = True


class BatchLoader:
    """Decode and augment batches on worker threads, one batch ahead of the training step.

    Pillow releases the GIL while decoding and resizing, so the next batch is prepared while
    MLX computes the current one. Each sample's augmentation generator is derived from
    (seed, epoch, position in the epoch), so the batches do not depend on thread timing.
    """

    def __init__(self, data: ImageFolder, workers: int = 2) -> None:
        self.data = data
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="dataset")

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "BatchLoader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self, index: int, min_side: int) -> Image.Image:
        """Decode sample ``index``; an unreadable file is a DatasetError naming it and the fix."""
        path = self.data.paths[index]
        try:
            return open_rgb(path, min_side=min_side)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DatasetError(
                f"cannot read {path} ({exc}); run `python prepare_dataset.py --data {self.data.root} --apply` "
                "to quarantine unreadable images") from None

    def _train_sample(self, index: int, aug: Augment, key: tuple[int, ...]) -> np.ndarray:
        # Decode at twice the output size: a crop of a quarter of the area still has full detail.
        img = self.load(index, 2 * aug.size)
        return train_view(img, aug.size, _rng(*key), scale=(aug.min_scale, 1.0), flip=aug.flip)

    def _eval_sample(self, index: int, aug: Augment) -> np.ndarray:
        return eval_view(self.load(index, 2 * aug.size), aug.size)

    def batches(self, order: np.ndarray, batch_size: int, aug: Augment, train: bool,
                seed: int = 0, epoch: int = 0, start: int = 0,
                part: slice = slice(None)) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (images (B, S, S, 3) float32 in [0, 1], labels (B,) int32) from batch ``start`` on.

        ``part``: only these positions of each batch (a rank's share; decoded alone, augmented
        exactly as in the whole batch, since a sample's key is its position in the epoch).
        """
        n_batches = math.ceil(len(order) / batch_size)

        def positions_of(b: int) -> range:
            return range(b * batch_size, min((b + 1) * batch_size, len(order)))[part]

        def submit(b: int) -> list[Future]:
            positions = positions_of(b)
            if train:
                return [self.pool.submit(self._train_sample, int(order[p]), aug, (seed, epoch, 0xA06, p))
                        for p in positions]
            return [self.pool.submit(self._eval_sample, int(order[p]), aug) for p in positions]

        pending = submit(start) if start < n_batches else None
        for b in range(start, n_batches):
            current = pending
            pending = submit(b + 1) if b + 1 < n_batches else None
            images = np.stack([f.result() for f in current])
            labels = np.asarray([self.data.labels[int(order[p])] for p in positions_of(b)], np.int32)
            yield images, labels


def num_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)

#!/usr/bin/env python
"""Compute a colour decorrelation matrix from your own images (for --decorrelate).

    python calc_cm.py --data dataset/               # writes weights/dataset_colours.npy
    python dream.py --input photo.jpg --decorrelate weights/dataset_colours.npy

Per image: short side 256, centre crop 224, covariance of the centred RGB pixels (in [0, 1]);
the covariances are averaged over the images and the matrix is the SVD square root
``M = U diag(sqrt(S))``, so ``M @ M.T`` is the data's average pixel covariance. The dream
engine normalises it (largest column -> unit norm) when it uses it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import models  # noqa: F401  (fast BLAS before anything can import mlx)
import numpy as np
from tqdm import tqdm

from deepdream.colour import ColourMatrixError, colour_matrix, normalise
from deepdream.dataset import DatasetError, calibration_view, scan_images
from deepdream.errors import exit_code, run_main
from models.registry import weights_dir
from models.weights import atomic_write


def choose(paths: list[Path], max_images: int | None, seed: int) -> list[Path]:
    """All paths, or a seeded random subset of ``max_images`` of them (kept in file order)."""
    if max_images is None or max_images >= len(paths):
        return paths
    picked = np.random.default_rng(seed).choice(len(paths), size=max_images, replace=False)
    return [paths[i] for i in sorted(picked)]


def views(paths: list[Path], skipped: list[str], quiet: bool) -> Iterator[np.ndarray]:
    """Calibration views of the readable images; unreadable ones are noted in ``skipped``."""
    for path in tqdm(paths, desc="covariance", unit="img", disable=quiet, file=sys.stderr):
        try:
            yield calibration_view(path)
        except (OSError, ValueError, SyntaxError) as exc:
            skipped.append(f"{path}: {exc}")


def format_matrix(matrix: np.ndarray) -> str:
    return "\n".join("  [" + ", ".join(f"{v:+.6f}" for v in row) + "]" for row in matrix)


def check_out(path: Path) -> None:
    """Fail before the (possibly long) computation when the output cannot be written."""
    if path.suffix.lower() != ".npy":
        raise DatasetError(f"--out {path} must end in .npy (the file dream.py --decorrelate reads)")
    if path.is_dir():
        raise DatasetError(f"--out {path} is a folder; give a file name ending in .npy")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot create the folder {parent} for --out ({exc.strerror}); choose another path") from None
    if not parent.is_dir() or not _writable(parent):
        raise DatasetError(f"cannot write to {parent}; choose another --out path")


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def default_out(data: str) -> Path:
    """Where the matrix goes without --out: the weights folder, named after the dataset."""
    return weights_dir() / f"{Path(data).expanduser().resolve().name}_colours.npy"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Compute a 3x3 colour decorrelation matrix (.npy) from images.")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="an ImageFolder (DIR/<class>/*.jpg) or a flat folder of images (searched recursively)")
    parser.add_argument("--out", metavar="PATH",
                        help="output .npy file (default weights/<data folder>_colours.npy, beside the weights)")
    parser.add_argument("--max-images", type=int, metavar="N", help="use a random subset of N images (default all)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the --max-images subset (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.max_images is not None and args.max_images < 1:
        raise DatasetError(f"--max-images must be at least 1 (got {args.max_images})")
    out = Path(args.out).expanduser() if args.out else default_out(args.data)
    check_out(out)
    paths = choose(scan_images(args.data), args.max_images, args.seed)
    skipped: list[str] = []
    try:
        matrix = colour_matrix(views(paths, skipped, args.quiet))
    except ColourMatrixError:
        raise DatasetError(f"none of the {len(paths)} images in {args.data} could be read; "
                           "run prepare_dataset.py to find the corrupt files") from None
    for line in skipped:
        print(f"skipped unreadable image {line}", file=sys.stderr)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object, so numpy does not append another ".npy"
            np.save(f, matrix)

    atomic_write(out, write)
    used = len(paths) - len(skipped)
    print(f"colour matrix M from {used} image(s) (M @ M.T = mean pixel covariance, RGB in [0, 1]):")
    print(format_matrix(matrix))
    print(f"normalised (largest column norm {np.linalg.norm(matrix, axis=0).max():.4f} -> 1), as the dream uses it:")
    print(format_matrix(normalise(matrix)))
    print(f"wrote {out}")
    print(f"dream with: python dream.py --input PHOTO --decorrelate {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return exit_code(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    run_main(main)

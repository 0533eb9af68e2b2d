#!/usr/bin/env python
"""Check an ImageFolder dataset before fine-tuning: counts, corrupt files, duplicates, statistics.

    python prepare_dataset.py --data dataset/                      # report only (changes nothing)
    python prepare_dataset.py --data dataset/ --apply              # quarantine corrupt + duplicate files
    python prepare_dataset.py --data dataset/ --resize-to small/   # resized copies (short side 256)

Layout: ``dataset/<class name>/*.jpg`` (any format Pillow opens). Originals are never deleted:
with ``--apply`` corrupt, duplicate and near-duplicate files are *moved* into a quarantine folder
(default ``<dataset>_quarantine`` next to the dataset), each move logged in ``moves.jsonl`` there.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import models  # noqa: F401  (fast BLAS before anything can import mlx)
import imagehash
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from deepdream.dataset import (
    CALIBRATION_CROP,
    CALIBRATION_SHORT_SIDE,
    ChannelStats,
    DatasetError,
    ImageFolder,
    center_crop,
    image_extensions,
    open_rgb,
    resize_short_side,
    scan_image_folder,
    to_array,
)
from deepdream.dataset.duplicates import find_exact_duplicates, find_near_duplicates
from deepdream.image_io import to_rgb
from deepdream.errors import exit_code, run_main
from models.weights import atomic_write

HASHES = {"phash": imagehash.phash, "dhash": imagehash.dhash, "ahash": imagehash.average_hash,
          "whash": imagehash.whash}
#: Extensions a resized copy keeps; anything else (gif, ico, ...) is written as PNG.
KEEP_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP",
               ".tif": "TIFF", ".tiff": "TIFF"}


@dataclass
class Record:
    """What one pass over an image file found out."""

    path: Path
    label: int
    sha256: str = ""
    phash: int | None = None
    pixels: int = 0
    error: str | None = None
    stats: tuple[int, np.ndarray, np.ndarray] | None = None  # pixel count, sum, sum of squares


@dataclass
class Findings:
    records: list[Record]
    corrupt: list[Record] = field(default_factory=list)
    duplicates: list[tuple[Record, Record]] = field(default_factory=list)       # (redundant, kept)
    near_duplicates: list[tuple[Record, Record, int]] = field(default_factory=list)  # (redundant, kept, distance)

    def excluded(self) -> set[Path]:
        return ({r.path for r in self.corrupt} | {r.path for r, _ in self.duplicates}
                | {r.path for r, _, _ in self.near_duplicates})

    def kept(self) -> list[Record]:
        out = self.excluded()
        return [r for r in self.records if r.path not in out]


def analyse(path: Path, label: int, hash_fn, hash_size: int) -> Record:
    """Hash, decode fully (that is the corruption test), perceptual-hash and measure one file."""
    record = Record(path, label)
    try:
        data = path.read_bytes()
    except OSError as exc:
        record.error = f"unreadable: {exc.strerror or exc}"
        return record
    record.sha256 = hashlib.sha256(data).hexdigest()
    if not data:
        record.error = "empty file"
        return record
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = ImageOps.exif_transpose(img)
            img.load()  # a full decode: truncated or damaged data raises here
        rgb = to_rgb(img)
    except UnidentifiedImageError:
        record.error = "corrupt: not an image format Pillow can read"
        return record
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        record.error = f"corrupt: {exc}"
        return record
    record.pixels = rgb.width * rgb.height
    bits = np.asarray(hash_fn(rgb, hash_size=hash_size).hash, dtype=bool).ravel()
    record.phash = int("".join("1" if b else "0" for b in bits), 2)
    view = to_array(center_crop(resize_short_side(rgb, CALIBRATION_SHORT_SIDE), CALIBRATION_CROP))
    pixels = view.reshape(-1, 3).astype(np.float64)
    record.stats = (len(pixels), pixels.sum(axis=0), np.square(pixels).sum(axis=0))
    return record


def non_image_files(root: Path) -> list[Path]:
    exts = image_extensions()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath) / n for n in filenames
                  if not n.startswith(".") and Path(n).suffix.lower() not in exts]
    return sorted(found)


def inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def free_destination(path: Path) -> Path:
    """``path``, or ``stem_1.ext``, ``stem_2.ext`` ... so a move never overwrites anything."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    return candidate


def quarantine(findings: Findings, root: Path, folder: Path) -> int:
    """Move corrupt/duplicate files to ``folder/<reason>/<relative path>``; log each move."""
    moves = ([(r, "corrupt", r.error) for r in findings.corrupt]
             + [(r, "duplicate", f"same bytes as {k.path}") for r, k in findings.duplicates]
             + [(r, "near_duplicate", f"perceptual distance {d} to {k.path}") for r, k, d in findings.near_duplicates])
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "moves.jsonl", "a", encoding="utf-8") as log:
        for record, reason, why in moves:
            dest = free_destination(folder / reason / record.path.relative_to(root))
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(record.path), str(dest))
            log.write(json.dumps({"from": str(record.path), "to": str(dest), "reason": reason, "detail": why}) + "\n")
    return len(moves)


def write_resized(record: Record, root: Path, out_dir: Path, short_side: int) -> None:
    """An upright RGB copy with its short side reduced to ``short_side`` (never enlarged)."""
    img = resize_short_side(open_rgb(record.path), short_side, upscale=False)
    rel = record.path.relative_to(root)
    fmt = KEEP_FORMAT.get(rel.suffix.lower())
    dest = out_dir / (rel if fmt else rel.with_suffix(".png"))
    fmt = fmt or "PNG"
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}

    def write(tmp: str) -> None:
        img.save(tmp, format=fmt, **options)

    atomic_write(dest, write)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Report and clean an ImageFolder dataset (dataset/<class>/*.jpg) before train_dream.py. "
                    "Without --apply nothing is moved.")
    parser.add_argument("--data", required=True, metavar="DIR", help="dataset folder with one sub-folder per class")
    parser.add_argument("--apply", action="store_true",
                        help="move corrupt and duplicate files into the quarantine folder (never deletes)")
    parser.add_argument("--quarantine", metavar="DIR", help="where --apply moves files (default: <DIR>_quarantine)")
    parser.add_argument("--near-threshold", type=int, default=4, metavar="BITS",
                        help="near duplicates: perceptual hashes at most this many bits apart (default 4; -1 disables)")
    parser.add_argument("--hash", choices=sorted(HASHES), default="phash", help="perceptual hash (default phash)")
    parser.add_argument("--hash-size", type=int, default=8, help="hash side; bits = size^2 (default 8)")
    parser.add_argument("--resize-to", metavar="DIR", help="write resized copies of the kept images to DIR/<class>/")
    parser.add_argument("--short-side", type=int, default=256, help="short side of the resized copies (default 256)")
    parser.add_argument("--stats-out", metavar="JSON", help="also write counts, problems and mean/std as JSON")
    parser.add_argument("--workers", type=int, default=2, help="decoding threads (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def validate(args: argparse.Namespace, root: Path) -> None:
    if args.hash_size < 2:
        raise DatasetError(f"--hash-size must be at least 2 (got {args.hash_size})")
    if args.short_side < 8:
        raise DatasetError(f"--short-side must be at least 8 pixels (got {args.short_side})")
    if args.near_threshold > args.hash_size ** 2:
        raise DatasetError(f"--near-threshold {args.near_threshold} exceeds the hash's {args.hash_size ** 2} bits; "
                           "use a smaller value (4-10 is typical) or -1 to disable")
    if args.resize_to and (inside(Path(args.resize_to), root) or inside(root, Path(args.resize_to))):
        raise DatasetError(f"--resize-to {args.resize_to} overlaps the dataset {root}; choose a separate folder")
    if args.apply and inside(Path(args.quarantine), root):
        raise DatasetError(f"--quarantine {args.quarantine} is inside the dataset (it would become a class); "
                           "choose a folder outside it")


def report(data: ImageFolder, findings: Findings, non_images: list[Path], args: argparse.Namespace,
           stats: ChannelStats) -> dict:
    root = data.root
    rel = lambda p: str(p.relative_to(root))  # noqa: E731
    counts = data.counts()
    print(f"dataset {root}: {len(counts)} classes, {len(data)} image files")
    width = max(len(c) for c in counts)
    kept_per_class = defaultdict(int)
    for r in findings.kept():
        kept_per_class[data.classes[r.label]] += 1
    for name, n in counts.items():
        note = "  <- no images" if n == 0 else ""
        print(f"  {name:<{width}}  {n:6d} files  {kept_per_class[name]:6d} kept{note}")
    if non_images:
        print(f"ignored {len(non_images)} non-image file(s), e.g. {rel(non_images[0])}")
    print(f"corrupt or unreadable: {len(findings.corrupt)}")
    for r in findings.corrupt:
        print(f"  {rel(r.path)}: {r.error}")
    print(f"exact duplicates: {len(findings.duplicates)}")
    for r, k in findings.duplicates:
        conflict = "  (in another class!)" if r.label != k.label else ""
        print(f"  {rel(r.path)} == {rel(k.path)}{conflict}")
    if args.near_threshold >= 0:
        print(f"near duplicates ({args.hash} distance <= {args.near_threshold}): {len(findings.near_duplicates)}")
        for r, k, d in findings.near_duplicates:
            conflict = "  (in another class!)" if r.label != k.label else ""
            print(f"  {rel(r.path)} ~ {rel(k.path)} (distance {d}){conflict}")
    kept = len(findings.kept())
    if stats.count:
        fmt = lambda v: "[" + ", ".join(f"{x:.4f}" for x in v) + "]"  # noqa: E731
        print(f"mean {fmt(stats.mean)}  std {fmt(stats.std)}  (RGB in [0, 1], {kept} kept images, "
              f"short side {CALIBRATION_SHORT_SIDE} + centre crop {CALIBRATION_CROP})")
    return {
        "root": str(root), "classes": counts, "kept": dict(kept_per_class), "images": len(data),
        "corrupt": [{"path": rel(r.path), "error": r.error} for r in findings.corrupt],
        "duplicates": [{"path": rel(r.path), "same_as": rel(k.path)} for r, k in findings.duplicates],
        "near_duplicates": [{"path": rel(r.path), "like": rel(k.path), "distance": d}
                            for r, k, d in findings.near_duplicates],
        "mean": stats.mean if stats.count else None, "std": stats.std if stats.count else None,
        "excluded": sorted(rel(p) for p in findings.excluded()),
    }


def run(args: argparse.Namespace) -> int:
    data = scan_image_folder(args.data, min_classes=1, allow_empty_classes=True)
    root = data.root
    if args.quarantine is None:
        args.quarantine = str(root.parent / f"{root.name}_quarantine")
    validate(args, root)
    if args.stats_out:
        Path(args.stats_out).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)

    hash_fn = HASHES[args.hash]
    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        jobs = pool.map(lambda item: analyse(item[0], item[1], hash_fn, args.hash_size), zip(data.paths, data.labels))
        records = list(tqdm(jobs, total=len(data), desc="checking", unit="img", disable=args.quiet, file=sys.stderr))

    findings = Findings(records, corrupt=[r for r in records if r.error])
    findings.duplicates = find_exact_duplicates([r for r in records if not r.error])
    if args.near_threshold >= 0:
        dup = {r.path for r, _ in findings.duplicates}
        findings.near_duplicates = find_near_duplicates(
            [r for r in records if not r.error and r.path not in dup], args.near_threshold, args.hash_size ** 2)

    stats = ChannelStats()
    for r in findings.kept():
        n, total, total_sq = r.stats
        stats.count += n
        stats.total += total
        stats.total_sq += total_sq

    summary = report(data, findings, non_image_files(root), args, stats)
    problems = len(findings.excluded())

    if args.resize_to:
        out_dir = Path(args.resize_to).expanduser()
        kept = findings.kept()
        for r in tqdm(kept, desc="resizing", unit="img", disable=args.quiet, file=sys.stderr):
            write_resized(r, root, out_dir, args.short_side)
        print(f"wrote {len(kept)} resized copies (short side <= {args.short_side}) to {out_dir}")

    if args.apply and problems:
        moved = quarantine(findings, root, Path(args.quarantine).expanduser())
        print(f"moved {moved} file(s) to {args.quarantine} (log: {Path(args.quarantine) / 'moves.jsonl'})")
    elif problems:
        print(f"nothing was moved (report only); rerun with --apply to move {problems} file(s) to {args.quarantine}")
    else:
        print("no problems found")

    if args.stats_out:
        def write(tmp: str) -> None:
            Path(tmp).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

        atomic_write(Path(args.stats_out).expanduser(), write)
        print(f"wrote {args.stats_out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return exit_code(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    run_main(main)

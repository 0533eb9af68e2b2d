"""Exact and near-duplicate images in a dataset (prepare_dataset.py's checks).

Exact duplicates share their bytes (SHA-256). Near duplicates have perceptual hashes
(imagehash) a few bits apart; they are grouped transitively (union-find over the close
pairs) and each group keeps one image.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np


class Hashed(Protocol):
    """What the search needs to know of one image file."""

    path: Path
    sha256: str
    phash: int | None
    pixels: int


H = TypeVar("H", bound=Hashed)


def find_exact_duplicates(records: Sequence[H]) -> list[tuple[H, H]]:
    """(redundant, kept) for files with the same bytes: the first file in dataset order is kept."""
    first: dict[str, H] = {}
    pairs = []
    for record in records:
        if not record.sha256:
            continue
        if record.sha256 in first:
            pairs.append((record, first[record.sha256]))
        else:
            first[record.sha256] = record
    return pairs


def hamming_pairs(hashes: Sequence[int], threshold: int, bits: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) for every pair with Hamming distance <= threshold (vectorised, row-chunked)."""
    words = (bits + 63) // 64
    packed = np.array([[(h >> (64 * w)) & 0xFFFFFFFFFFFFFFFF for w in range(words)] for h in hashes],
                      dtype=np.uint64).reshape(len(hashes), words)
    pairs = []
    chunk = 1024
    for start in range(0, len(hashes), chunk):
        block = packed[start:start + chunk]
        dist = np.bitwise_count(block[:, None, :] ^ packed[None, :, :]).sum(axis=2)
        for a, b in zip(*np.nonzero(dist <= threshold)):
            i = start + int(a)
            if i < int(b):
                pairs.append((i, int(b), int(dist[a, b])))
    return pairs


def find_near_duplicates(records: Sequence[H], threshold: int, bits: int) -> list[tuple[H, H, int]]:
    """(redundant, kept, distance to its closest match) for images whose perceptual hashes are
    within ``threshold`` bits. In each group the image with the most pixels (then the first in
    dataset order) is kept."""
    candidates = [r for r in records if r.phash is not None]
    parent = list(range(len(candidates)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    closest: dict[int, int] = {}
    for i, j, d in hamming_pairs([r.phash for r in candidates], threshold, bits):
        parent[root(j)] = root(i)
        closest[i] = min(closest.get(i, d), d)
        closest[j] = min(closest.get(j, d), d)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(candidates)):
        groups[root(i)].append(i)
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        keep = max(members, key=lambda i: (candidates[i].pixels, -i))
        out += [(candidates[i], candidates[keep], closest[i]) for i in members if i != keep]
    return sorted(out, key=lambda t: str(t[0].path))

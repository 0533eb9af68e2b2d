"""deepdream/dataset/duplicates.py: exact and near-duplicate search (prepare_dataset.py runs it on real files)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deepdream.dataset.duplicates import find_exact_duplicates, find_near_duplicates, hamming_pairs


@dataclass
class Item:
    path: Path
    sha256: str = ""
    phash: int | None = None
    pixels: int = 0


def test_exact_duplicates_keep_the_first_file() -> None:
    a, b, c = Item(Path("a"), "x"), Item(Path("b"), "y"), Item(Path("c"), "x")
    assert find_exact_duplicates([a, b, c, Item(Path("d"))]) == [(c, a)]


def test_hamming_pairs_count_bits_across_64_bit_words() -> None:
    far = (1 << 100) | 0b111
    assert hamming_pairs([0, 0b1, far], threshold=1, bits=128) == [(0, 1, 1)]
    assert (0, 2, 4) in hamming_pairs([0, 0b1, far], threshold=4, bits=128)


def test_near_duplicates_group_transitively_and_keep_the_largest() -> None:
    # a ~ b (1 bit) and b ~ c (1 bit), a and c 2 bits apart: one group with threshold 1.
    a, b, c = Item(Path("a"), phash=0b00, pixels=10), Item(Path("b"), phash=0b01, pixels=50), \
        Item(Path("c"), phash=0b11, pixels=20)
    lone = Item(Path("d"), phash=0b1111_0000, pixels=99)
    found = find_near_duplicates([a, b, c, lone], threshold=1, bits=64)
    assert [(r.path.name, k.path.name, d) for r, k, d in found] == [("a", "b", 1), ("c", "b", 1)]

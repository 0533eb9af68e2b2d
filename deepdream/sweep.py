"""Sweeps: one render per class or channel, several at a time through the network, into a folder.

Each item's image is written atomically as soon as its batch finishes, named after the item,
so a re-run of the same command renders only what is missing (like the video's frames); each
item is seeded by itself, so which items share a batch changes nothing. A labelled contact sheet
of every item is written at the end.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .contact_sheet import contact_sheet
from .errors import DreamError, Interrupted
from .image_io import check_writable_folder, load_image, save_image
from .visualise import Renderer, RenderPlan

SHEET_NAME = "contact_sheet.png"
#: Items rendered together in one pass of a sweep, unless --batch says otherwise.
SWEEP_BATCH = 8


def item_filename(number: int, label: str) -> str:
    """``0007_block5_7.png``: sortable by channel or class number, readable by label."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_") or "item"
    return f"{number:04d}_{slug}.png"


def check_sweep_folder(output: str | None, flag: str = "--sweep") -> Path:
    """The folder a ``flag`` job (--sweep, --atlas) writes into, checked before any work."""
    example = f"outputs/{flag.lstrip('-')}"
    if output is None:
        raise DreamError(f"{flag} writes one image per item: give a folder with --output, e.g. --output {example}")
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise DreamError(f"{flag} --output names a folder, but '{folder}' is a file")
    if folder.suffix.lower() in (".png", ".jpg", ".jpeg") and not folder.exists():
        raise DreamError(f"{flag} --output names a folder (got '{folder}'); e.g. --output {example}")
    return folder


def item_seed(seed: int | None, key: str) -> int:
    """An item's render seed, from the job's ``--seed`` and the item itself (never its position or
    batch), so an item renders alike in every run that includes it and ``--seed <item seed>`` on a
    render of that item alone draws the same numbers."""
    digest = hashlib.sha256(f"{seed if seed is not None else 0}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def sweep_seeds(plan: RenderPlan, seed: int | None) -> list[int]:
    """Each item's seed, keyed by what it renders (``channel:block5:7``, ``class:logits:1``)."""
    assert plan.sweep_term is not None
    term = plan.objective.terms[plan.sweep_term]
    return [item_seed(seed, f"{term.kind}:{term.layer}:{target}") for _, target in plan.items]


def sweep_paths(plan: RenderPlan, folder: Path) -> list[Path]:
    """Each item's file, numbered by its channel or class (not its place in this run's list), so a run
    that asks for other items finds the ones it shares with an earlier run."""
    return [folder / item_filename(target, label) for label, target in plan.items]


def run_sweep(renderer: Renderer, plan: RenderPlan, folder: Path, batch: int, seed: int | None, *,
              quiet: bool = False, bar: tqdm | None = None, sheet: bool = True) -> list[Path]:
    """Render every item of ``plan`` not yet in ``folder``, ``batch`` at a time; returns the written
    items' paths, then the contact sheet's (``sheet``). Each item has its own seed (``sweep_seeds``),
    so a resumed sweep renders the items it still lacks as an uninterrupted run would. ``bar``: a
    progress bar shared with other sweeps (an atlas), advanced here instead of one of its own."""
    check_writable_folder(folder)
    assert plan.sweep_term is not None
    paths = sweep_paths(plan, folder)
    seeds = sweep_seeds(plan, seed)
    todo = [i for i, p in enumerate(paths) if not p.is_file()]
    written: list[Path] = []
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=len(paths), initial=len(paths) - len(todo), desc="sweep", unit="item", disable=quiet,
                   file=sys.stderr, dynamic_ncols=True)
    try:
        for start in range(0, len(todo), batch):
            members = todo[start:start + batch]
            rows = np.array([[plan.items[i][1]] for i in members], np.int32)
            objective = plan.objective.with_targets(plan.sweep_term, rows)
            rngs = [np.random.default_rng(seeds[i]) for i in members]
            try:
                images = renderer.render(len(members), objective.targets(), rngs, progress=False)
            except KeyboardInterrupt:
                done = len(paths) - len(todo) + start
                raise Interrupted(f"{done} of {len(paths)} items are in {folder}; run the same command to "
                                  "continue") from None
            for i, image in zip(members, images):
                written.append(save_image(paths[i], image))
            bar.update(len(members))
    finally:
        if own_bar:
            bar.close()
    if not sheet:
        return written
    sheet_image = contact_sheet([(label, load_image(p)) for (label, _), p in zip(plan.items, paths)], cell=128)
    sheet_path = save_image(folder / SHEET_NAME, np.asarray(sheet_image, dtype=np.float32) / 255.0)
    return written + [sheet_path]

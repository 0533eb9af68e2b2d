"""Sweeps: one render per class or channel, several at a time through the network, into a folder.

Each item's image is written atomically as soon as its batch finishes, named after the item,
so a re-run of the same command skips what is already there and continues (like the video's
frames); a labelled contact sheet of every item is written at the end.
"""

from __future__ import annotations

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


def item_filename(position: int, label: str) -> str:
    """``0007_block5_7.png``: sortable by position, readable by label."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_") or "item"
    return f"{position:04d}_{slug}.png"


def check_sweep_folder(output: str | None) -> Path:
    if output is None:
        raise DreamError("--sweep writes one image per item: give a folder with --output, e.g. --output outputs/sweep")
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise DreamError(f"--sweep --output names a folder, but '{folder}' is a file")
    if folder.suffix.lower() in (".png", ".jpg", ".jpeg") and not folder.exists():
        raise DreamError(f"--sweep --output names a folder (got '{folder}'); e.g. --output outputs/sweep")
    return folder


def run_sweep(renderer: Renderer, plan: RenderPlan, folder: Path, batch: int, seed: int | None, *,
              quiet: bool = False) -> list[Path]:
    """Render every item of ``plan`` not yet in ``folder``, ``batch`` at a time; returns the sheet's path
    after the items'. Batch ``k`` is seeded with ``(seed, k)``, so a resumed sweep renders the items
    it still lacks exactly as an uninterrupted run would."""
    check_writable_folder(folder)
    assert plan.sweep_term is not None
    paths = [folder / item_filename(i, label) for i, (label, _) in enumerate(plan.items)]
    batches = [list(range(i, min(i + batch, len(paths)))) for i in range(0, len(paths), batch)]
    todo = [(k, b) for k, b in enumerate(batches) if not all(paths[i].is_file() for i in b)]
    written: list[Path] = []
    finished = {i for i, p in enumerate(paths) if p.is_file()}
    done = len(finished)
    with tqdm(total=len(paths), initial=done, desc="sweep", unit="item", disable=quiet, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for k, members in todo:
            rows = np.array([[plan.items[i][1]] for i in members], np.int32)
            objective = plan.objective.with_targets(plan.sweep_term, rows)
            rng = np.random.default_rng([seed if seed is not None else 0, k])
            try:
                images = renderer.render(len(members), objective.targets(), rng, progress=False)
            except KeyboardInterrupt:
                raise Interrupted(f"{done} of {len(paths)} items are in {folder}; run the same command to "
                                  "continue") from None
            for i, image in zip(members, images):
                written.append(save_image(paths[i], image))
            bar.update(sum(1 for i in members if i not in finished))
            finished.update(members)
            done = len(finished)
    sheet = contact_sheet([(label, load_image(p)) for (label, _), p in zip(plan.items, paths)], cell=128)
    sheet_path = save_image(folder / SHEET_NAME, np.asarray(sheet, dtype=np.float32) / 255.0)
    return written + [sheet_path]

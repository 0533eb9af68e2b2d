"""Renders from noise as jobs (``jobs.run_job``): a sweep, one render per class or channel, several
at a time through the network, into a folder with a contact sheet; and a single render (one
objective, ``--batch`` images).

A sweep's items are ``plan.items`` (label, target row: a channel or a class), each written as
``NNNN_<label>.png`` (``item_filename``); the job's unit is a batch of ``--batch`` of them,
rendered together and seeded by ``(seed, batch index)``, so an item is the same bytes whichever
rank renders it and a rerun renders only the batches still missing. Each file carries the record
of what made it, so a rerun with other settings (``--width``...) is refused in one line unless
``--overwrite`` (``outputs.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .contact_sheet import contact_sheet
from .errors import DreamError, Interrupted
from .image_io import check_output_path, check_writable_folder, encode_image, load_image, save_image
from .jobs import Item, Job, JobReport, Outputs, plural, run_job
from .outputs import PARTIAL, SEED, record_json
from .visualise import Renderer, RenderPlan, tile_targets

SHEET_NAME = "contact_sheet.png"
#: Items rendered together in one pass of a sweep, unless --batch says otherwise.
SWEEP_BATCH = 8
RECORD_VERSION = 1

#: Builds the model's renderer and the plan of what it renders (every check included): rank 0 at
#: once, another rank when its first unit comes.
Setup = Callable[[], tuple[Renderer, RenderPlan]]


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


def render_record(renderer: Renderer, weights: str | None, objective: str, seed: int | None,
                  **extra: Any) -> dict[str, Any]:
    """What decides a render's pixels: model, weights, settings (named like their flags), objective, seed."""
    settings = {k: v for k, v in asdict(renderer.settings).items() if k not in ("seed", "save_every")}
    return record_json({"version": RECORD_VERSION, "model": renderer.model.name, "weights": weights,
                        "render": settings, "objective": objective, **extra, SEED: seed})


class _RenderJob(Job):
    """What both render jobs share: the renderer, built once per rank."""

    def __init__(self, setup: Setup, *, weights: str | None, seed: int | None, overwrite: bool) -> None:
        self.setup = setup
        self.weights = str(Path(weights).resolve()) if weights else None
        self.seed = seed
        self.overwrite = overwrite
        self._built: tuple[Renderer, RenderPlan] | None = None

    def built(self) -> tuple[Renderer, RenderPlan]:
        if self._built is None:
            self._built = self.setup()
        return self._built


class SweepJob(_RenderJob):
    """One render per item of the plan, ``batch`` at a time, into ``folder``, and a contact sheet."""

    noun = "item"

    def __init__(self, setup: Setup, folder: Path, batch: int, *, weights: str | None = None, seed: int | None,
                 overwrite: bool = False) -> None:
        super().__init__(setup, weights=weights, seed=seed, overwrite=overwrite)
        self.folder = folder
        self.batch = batch

    def where(self) -> str:
        return str(self.folder)

    def items(self) -> list[Item]:
        renderer, plan = self.built()
        check_writable_folder(self.folder)
        assert plan.sweep_term is not None
        s = renderer.settings
        items = []
        for k, first in enumerate(range(0, len(plan.items), self.batch)):
            members = list(range(first, min(first + self.batch, len(plan.items))))
            labels = [plan.items[i][0] for i in members]
            items.append(Item(key=f"batch {k}", label=" ".join(labels), captions=tuple(labels),
                              outputs=tuple(str(self.folder / item_filename(i, plan.items[i][0])) for i in members),
                              cost=float(len(members) * s.height * s.width * s.steps),
                              spec={"batch": k, "members": members},
                              record=render_record(renderer, self.weights, plan.label, self.seed, items=labels)))
        return items

    def make(self, item: Item, unit: int, payload: bytes, progress: bool) -> Outputs:
        renderer, plan = self.built()
        members = item.spec["members"]
        rows = np.array([[plan.items[i][1]] for i in members], np.int32)
        objective = plan.objective.with_targets(plan.sweep_term, rows)
        rng = np.random.default_rng([self.seed if self.seed is not None else 0, item.spec["batch"]])
        images = renderer.render(len(members), objective.targets(), rng, progress=progress,
                                 description=item.label)
        return [(j, encode_image(image, path, item.record)) for j, (image, path) in enumerate(zip(images, item.outputs))]

    def finish(self, report: JobReport) -> list[Path]:
        """The contact sheet of every item, once all are made."""
        if report.failed:
            return []
        _, plan = self.built()
        paths = [self.folder / item_filename(i, label) for i, (label, _) in enumerate(plan.items)]
        sheet = contact_sheet([(label, load_image(p)) for (label, _), p in zip(plan.items, paths)], cell=128)
        return [save_image(self.folder / SHEET_NAME, np.asarray(sheet, dtype=np.float32) / 255.0)]

    def interrupted(self, kept: int, total: int) -> str:
        return f"{kept} of {total} {plural(self.noun, total)} are in {self.folder}; run the same command to continue"


class SingleRenderJob(_RenderJob):
    """One objective rendered ``--batch`` times (one item), to ``output`` (``<stem>_1``... for several)."""

    noun = "render"

    def __init__(self, setup: Setup, output: Path | None, default: Callable[[RenderPlan], Path], *,
                 weights: str | None = None, seed: int | None, overwrite: bool = False) -> None:
        super().__init__(setup, weights=weights, seed=seed, overwrite=overwrite)
        self.seed_given = seed is not None
        self.output = output
        self.default = default

    def where(self) -> str:
        return str(Path(self.paths[0]).parent)

    def items(self) -> list[Item]:
        if self.output is not None:
            check_output_path(self.output)  # before the slow part, so a typo costs nothing
        renderer, plan = self.built()
        output = self.output if self.output is not None else self.default(plan)
        n = renderer.settings.batch
        self.paths = [output] if n == 1 else [output.with_stem(f"{output.stem}_{i + 1}") for i in range(n)]
        for path in self.paths:
            check_output_path(path)
        seed = self.seed if self.seed is not None else int(np.random.SeedSequence().entropy % 2**31)
        return [Item(key=plan.label, outputs=tuple(map(str, self.paths)), label=plan.label, spec={"seed": seed},
                     cost=float(n * renderer.settings.height * renderer.settings.width * renderer.settings.steps),
                     record=render_record(renderer, self.weights, plan.label, seed))]

    def make(self, item: Item, unit: int, payload: bytes, progress: bool) -> Outputs:
        renderer, plan = self.built()
        n = renderer.settings.batch
        snapshots: list[int] = []

        def snapshot(images: np.ndarray) -> None:  # --save-every: one item, on rank 0, which writes
            for path, image in zip(item.outputs, images):
                save_image(path, image, {**(item.record or {}), PARTIAL: True})
            snapshots.append(len(images))

        objective = tile_targets(plan.objective, n)
        try:
            images = renderer.render(n, objective.targets(), np.random.default_rng(item.spec["seed"]),
                                     snapshot=snapshot, progress=progress, description=plan.label)
        except KeyboardInterrupt:
            if snapshots:
                raise Interrupted(f"stopped; the last snapshot is in {item.outputs[0]}") from None
            raise
        return [(j, encode_image(image, path, item.record)) for j, (image, path) in enumerate(zip(images, item.outputs))]


def run_sweep(renderer: Renderer, plan: RenderPlan, folder: Path, batch: int, seed: int | None, *,
              quiet: bool = False, overwrite: bool = False) -> list[Path]:
    """Render every item of ``plan`` not yet in ``folder``, ``batch`` at a time, on this process or every
    rank; returns the paths written, the contact sheet's last."""
    report = run_job(SweepJob(lambda: (renderer, plan), folder, batch, seed=seed, overwrite=overwrite), quiet=quiet)
    return report.written + report.extra

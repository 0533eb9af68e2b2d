"""Renders from noise as jobs (``jobs.run_job``): a sweep, one render per class or channel, several
at a time through the network, into a folder with a contact sheet; and a single render (one
objective, ``--batch`` images). An atlas (``atlas.py``) is a sweep of several sections.

A sweep is one or more ``SweepSection``s: a plan's items (label, target: a channel or a class),
each written as ``NNNN_<label>.png``, numbered by its channel or class (``item_filename``), into
the section's folder. The job's unit is a batch: the section's items cut into ``--batch`` at a
time in plan order, so a batch always has the same size and members, whichever rank renders it
and however many runs it takes. Each item is seeded by itself (``item_seed``: ``--seed`` and what
it renders), and each file carries the record of what made it (settings, seed, the batch's
items), so a rerun renders only the batches still missing something, writes only the missing
files (the others are finished, the same bytes), and refuses other settings (``--width``...) in
one line unless ``--overwrite`` (``outputs.py``).

Why batches of a fixed size: a batch's renders go through the network together, and the batch
size changes the order of the BLAS's sums, so an image rendered among 8 differs from the same
item rendered alone by a few grey levels; which items share the batch does not change it. Fixed
batches keep every image byte-identical to its first making.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models import DreamModel

from .contact_sheet import contact_sheet
from .errors import DreamError, Interrupted
from .gallery import slug
from .image_io import check_output_path, check_writable_folder, encode_image, load_image, save_image
from .jobs import Item, Job, JobReport, Outputs, plural, run_job
from .objectives import Term
from .outputs import PARTIAL, SEED, new_seed, record_json
from .visualise import Renderer, RenderPlan, RenderSettings, tile_targets

if TYPE_CHECKING:
    import mlx.core as mx

SHEET_NAME = "contact_sheet.png"
#: Items rendered together in one pass of a sweep, unless --batch says otherwise.
SWEEP_BATCH = 8
RECORD_VERSION = 1


def item_filename(number: int, label: str) -> str:
    """``0007_block5_7.png``: sortable by channel or class number, readable by label."""
    return f"{number:04d}_{slug(label)}.png"


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
    """An item's render seed, from the job's ``--seed`` and what the item renders (never its position,
    its batch or the rank), so an item renders alike in every run and on every rank."""
    digest = hashlib.sha256(f"{seed if seed is not None else 0}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass(frozen=True)
class SweepSection:
    """One sweep's items (a layer's channels, or classes) and the folder their files go to."""

    plan: RenderPlan
    folder: Path
    title: str = ""     # its heading on a page (the layer, or "classes")
    count: int = 0      # the layer's channels, or the model's classes (a page says "3 of 40")

    @property
    def term(self) -> Term:
        assert self.plan.sweep_term is not None
        return self.plan.objective.terms[self.plan.sweep_term]

    @property
    def kind(self) -> str:
        return self.term.kind

    @property
    def layer(self) -> str:
        return self.term.layer

    @property
    def paths(self) -> list[Path]:
        """Each item's file, numbered by its channel or class (not its place in this run's list), so a
        run that asks for other items finds the ones it shares with an earlier run."""
        return [self.folder / item_filename(target, label) for label, target in self.plan.items]

    def seeds(self, seed: int | None) -> list[int]:
        """Each item's seed, keyed by what it renders (``channel:block5:7``, ``class:logits:1``)."""
        term = self.term
        return [item_seed(seed, f"{term.kind}:{term.layer}:{target}") for _, target in self.plan.items]

    def batch(self, members: Sequence[int], seed: int | None) -> tuple[list[mx.array], list[int]]:
        """The objective's targets and the items' seeds that render the batch ``members`` (indices into
        ``plan.items``)."""
        rows = np.array([[self.plan.items[i][1]] for i in members], np.int32)
        seeds = self.seeds(seed)
        return self.plan.objective.with_targets(self.plan.sweep_term, rows).targets(), [seeds[i] for i in members]

    def units(self, batch: int) -> list[list[int]]:
        """The items (indices into ``plan.items``) cut into batches of ``batch``, in plan order."""
        n = len(self.plan.items)
        return [list(range(first, min(first + batch, n))) for first in range(0, n, batch)]


def render_record(renderer: Renderer, weights: str | None, objective: str, seed: int | None,
                  **extra: Any) -> dict[str, Any]:
    """What decides a render's pixels: model, weights, settings (named like their flags), objective, seed."""
    settings = {k: v for k, v in asdict(renderer.settings).items() if k not in ("seed", "save_every")}
    return record_json({"version": RECORD_VERSION, "model": renderer.model.name, "weights": weights,
                        "render": settings, "objective": objective, **extra, SEED: seed})


class _RenderJob(Job):
    """What both render jobs share: ``setup`` (the model's renderer and plan, or a sweep's sections,
    every check included), run by rank 0 at once and by another rank when its first unit comes."""

    def __init__(self, setup: Callable[[], Any], *, weights: str | None, seed: int | None, overwrite: bool) -> None:
        self.setup = setup
        self.weights = str(Path(weights).resolve()) if weights else None
        self.seed = seed
        self.overwrite = overwrite
        self._built: Any = None

    def built(self) -> Any:
        if self._built is None:
            self._built = self.setup()
        return self._built


#: A sweep's setup: the model, the render settings and the sections.
SweepSetup = Callable[[], tuple[DreamModel, RenderSettings, list[SweepSection]]]


class SweepJob(_RenderJob):
    """Every item of every section, ``batch`` at a time (see the module), and each section's contact sheet."""

    noun = "item"
    #: A contact sheet of each section's items, once all are made.
    sheets = True

    def __init__(self, setup: SweepSetup, batch: int, *, weights: str | None = None, seed: int | None,
                 overwrite: bool = False) -> None:
        super().__init__(setup, weights=weights, seed=seed, overwrite=overwrite)
        self.batch = batch
        self._renderers: dict[int, Renderer] = {}

    @property
    def sections(self) -> list[SweepSection]:
        return self.built()[2]

    def where(self) -> str:
        folders = {str(s.folder) for s in self.sections}
        return folders.pop() if len(folders) == 1 else str(self.sections[0].folder.parent)

    def renderer(self, section: int) -> Renderer:
        """The section's renderer (its objective's layer), built once per rank."""
        if section not in self._renderers:
            model, settings, sections = self.built()
            self._renderers[section] = Renderer(model, sections[section].plan.objective, settings)
        return self._renderers[section]

    def unit_key(self, section: SweepSection, k: int) -> str:
        return f"batch {k}" if len(self.sections) == 1 else f"{section.title} batch {k}"

    def items(self) -> list[Item]:
        _, settings, sections = self.built()
        items = []
        for s, section in enumerate(sections):
            check_writable_folder(section.folder)
            renderer = self.renderer(s)   # its checks (a render too small for the model) before any work
            paths = section.paths
            for k, members in enumerate(section.units(self.batch)):
                labels = [section.plan.items[i][0] for i in members]
                items.append(Item(
                    key=self.unit_key(section, k), label=" ".join(labels), captions=tuple(labels),
                    outputs=tuple(str(paths[i]) for i in members),
                    cost=float(len(members) * settings.height * settings.width * settings.steps),
                    spec={"section": s, "members": members},
                    record=render_record(renderer, self.weights, section.plan.label, self.seed, items=labels)))
        return items

    def make(self, item: Item, unit: int, payload: bytes, progress: bool) -> Outputs:
        spec = item.spec
        targets, seeds = self.sections[spec["section"]].batch(spec["members"], self.seed)
        rngs = [np.random.default_rng(seed) for seed in seeds]
        images = self.renderer(spec["section"]).render(len(seeds), targets, rngs, progress=progress,
                                                       description=item.label)
        return [(j, encode_image(image, path, item.record)) for j, (image, path) in enumerate(zip(images, item.outputs))]

    def finish(self, report: JobReport) -> list[Path]:
        """Each section's contact sheet, once all its items are made."""
        if report.failed or not self.sheets:
            return []
        sheets = []
        for section in self.sections:
            cells = [(label, load_image(p)) for (label, _), p in zip(section.plan.items, section.paths)]
            sheet = contact_sheet(cells, cell=128)
            sheets.append(save_image(section.folder / SHEET_NAME, np.asarray(sheet, dtype=np.float32) / 255.0))
        return sheets

    def interrupted(self, kept: int, total: int) -> str:
        return f"{kept} of {total} {plural(self.noun, total)} are in {self.where()}; run the same command to continue"


class SingleRenderJob(_RenderJob):
    """One objective rendered ``--batch`` times (one item), to ``output`` (``<stem>_1``... for several)."""

    noun = "render"

    def __init__(self, setup: Callable[[], tuple[Renderer, RenderPlan]], output: Path | None,
                 default: Callable[[RenderPlan], Path], *, weights: str | None = None, seed: int | None,
                 overwrite: bool = False) -> None:
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
        seed = self.seed if self.seed is not None else new_seed()
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
    section = SweepSection(plan, folder)
    job = SweepJob(lambda: (renderer.model, renderer.settings, [section]), batch, seed=seed, overwrite=overwrite)
    job._renderers[0] = renderer
    report = run_job(job, quiet=quiet)
    return report.written + report.extra

"""The gallery page of each job that makes several images, written from the job's report
(``run_job(finished=...)``: when the job ends, and after Ctrl-C with what exists), with the command
that remakes each image (``args.command_line`` over the job's own flags):

- ``atlas_page``: dream.py --atlas (``atlas.describe_atlas``), ``index.html`` in its folder;
- ``sweep_page``: dream.py --sweep, an atlas of one section;
- ``dreams_page``: dream.py's batches and ``--model all``: each input with its dreams beside it;
- ``write_video_page``: a video's poster frame, its player and its command, as ``<video stem>.html``.

``page_writer`` picks the one for dream.py's job.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from models import DreamModel

from ..atlas import AtlasJob, Remake, describe_atlas
from ..batch import DreamJob
from ..gallery import Gallery, Picture, Section, slug, write_gallery
from ..jobs import Job, JobReport
from ..sweep import SweepJob, SweepSection
from ..visualise import RenderSettings
from .args import command_line, still_parser
from .model_choice import is_all

DREAM_SCRIPT = "dream.py"
#: A fine-tuned model's class names listed at the head of its atlas, at most.
CLASSES_LISTED = 50

#: What ``run_job`` calls with the report, on rank 0.
PageWriter = Callable[[JobReport], None]


def _weights_label(args: argparse.Namespace, model: DreamModel) -> str:
    return f"{Path(args.weights).name} ({model.name})" if args.weights else model.name


def _job_command(args: argparse.Namespace) -> str:
    return command_line(still_parser(), args, DREAM_SCRIPT, quiet=None)


def _shows_anything(report: JobReport) -> bool:
    """Whether the job has any finished output to show (a job that made nothing writes no page)."""
    return any(item["outputs"] for item in report.description()["items"])


def _seed(args: argparse.Namespace) -> int:
    """A render job's seed (without --seed, 0: every item's own seed derives from it)."""
    return args.seed if args.seed is not None else 0


def render_details(args: argparse.Namespace, model: DreamModel, settings: RenderSettings,
                   seed: int) -> list[tuple[str, str]]:
    """The settings every picture of an atlas or sweep shares, as its page lists them."""
    r = settings.robustness
    rows = [("model", _weights_label(args, model)),
            ("size", f"{settings.width} x {settings.height} px"),
            ("steps", f"{settings.steps} (Adam, lr {settings.lr:g})"),
            ("parameterisation", f"{settings.param}" + (f", decay power {settings.decay_power:g}"
                                                       if settings.param == "fft" else "")),
            ("colour", f"decorrelated ({settings.decorrelate})" if settings.decorrelate else "plain RGB"),
            ("transforms", f"pad {r.pad}, jitter {r.jitter}, scale {r.scale_range[0]:g}-{r.scale_range[1]:g}, "
                           f"rotation up to {r.rotate:g} degrees"),
            ("batch", f"{settings.batch} images rendered together"),
            ("seed", f"{seed} (each image's own seed derives from it and the image's layer and channel or class)")]
    if args.weights and model.class_names:   # a fine-tuned model: its own classes
        names = model.class_names
        rows.insert(1, ("classes", ", ".join(names[:CLASSES_LISTED]) +
                        (f" ... ({len(names)} in all)" if len(names) > CLASSES_LISTED else "")))
    return rows


def index_ranges(values: Sequence[int]) -> list[str]:
    """Indices as ``--channels`` words: runs as ranges (``0-7``), the rest one by one."""
    words: list[str] = []
    start = 0
    for k in range(1, len(values) + 1):
        if k == len(values) or values[k] != values[k - 1] + 1:
            first, last = values[start], values[k - 1]
            words.append(str(first) if first == last else f"{first}-{last}")
            start = k
    return words


def render_remake(args: argparse.Namespace, model: DreamModel, settings: RenderSettings) -> Remake:
    """The command that renders one batch of a section again, as a --sweep of just that batch (the
    same items, so the same batch size and seeds: the same bytes) into a folder named after it."""
    parser = still_parser()
    common = {"atlas": None, "sweep": True, "quiet": None, "overwrite": None, "seed": _seed(args),
              "width": settings.width, "height": settings.height,
              "model": args.model if args.model or args.weights else model.name}

    def remake(section: SweepSection, members: list[int]) -> str:
        targets = [section.plan.items[i][1] for i in members]
        if section.kind == "class":
            # An atlas's classes stand alone; a sweep's keep whatever else the objective had (--layers).
            item: dict[str, object] = {"class_": [str(t) for t in targets]}
            if args.atlas:
                item.update(layers=None, channels=None)
        else:
            item = {"layers": [section.layer], "channels": index_ranges(targets)}
            if args.atlas:
                item["class_"] = None
        name = slug(section.title or section.layer) + "_" + (
            str(targets[0]) if len(targets) == 1 else f"{targets[0]}-{targets[-1]}")
        return command_line(parser, args, DREAM_SCRIPT, **{**common, **item}, output=name)
    return remake


def atlas_page(args: argparse.Namespace, job: AtlasJob) -> PageWriter:
    """dream.py --atlas's ``index.html``."""
    def write(report: JobReport) -> None:
        if not _shows_anything(report):
            return
        model, settings, _ = job.built()
        title = f"Atlas of {_weights_label(args, model)}"
        gallery = describe_atlas(job, report, title=title, details=render_details(args, model, settings, _seed(args)),
                                 command=_job_command(args), remake=render_remake(args, model, settings))
        _announce(args, write_gallery(gallery, job.folder))
    return write


def sweep_page(args: argparse.Namespace, job: SweepJob) -> PageWriter:
    """dream.py --sweep's ``index.html``: its items as one section of an atlas."""
    def write(report: JobReport) -> None:
        if not _shows_anything(report):
            return
        model, settings, (section,) = job.built()
        gallery = describe_atlas(job, report, title=f"Sweep of {section.title}, {_weights_label(args, model)}",
                                 details=render_details(args, model, settings, _seed(args)),
                                 command=_job_command(args), remake=render_remake(args, model, settings))
        _announce(args, write_gallery(gallery, section.folder))
    return write


@dataclass(frozen=True)
class Dream:
    """One dream a job made: the model that dreamed it, its file, its settings and its command."""

    model: str
    path: Path
    settings: Mapping[str, object]   # as recorded (``DreamSettings.as_dict()``)
    command: str


@dataclass(frozen=True)
class DreamRow:
    """An input (None: dreamed from noise) and its dreams."""

    input: Path | None
    dreams: tuple[Dream, ...]
    title: str = ""


def dream_command(args: argparse.Namespace, **changes: object) -> str:
    """The dream.py command of ``args`` with ``changes`` (e.g. one model, its output and the seed)."""
    return command_line(still_parser(), args, DREAM_SCRIPT, **{"quiet": None, "overwrite": None, **changes})


def detail_rows(values: Mapping[str, object]) -> tuple[tuple[str, str], ...]:
    """Settings (a record, ``DreamSettings.as_dict()``) as a page's rows: lists spaced, a size as W x H,
    nested settings on one line; unset values left out."""
    def show(key: str, value: object) -> str:
        if key == "size":
            return " x ".join(map(str, value)) + " px"
        if isinstance(value, Mapping):
            return ", ".join(f"{k.replace('_', ' ')} {show(k, v)}" for k, v in value.items() if v is not None)
        return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return tuple((key.replace("_", " "), show(key, value)) for key, value in values.items() if value is not None)


def dreams_page(args: argparse.Namespace, job: DreamJob) -> PageWriter:
    """``index.html`` in a batch's folder (several inputs, or --model all): a row per input, the input
    first, then each model's dream with its settings and the command that makes it alone (the input,
    the model and the job's seed: the same bytes)."""
    def write(report: JobReport) -> None:
        if job.folder is None or not _shows_anything(report):
            return
        description = report.description()
        seed = job.ctx["seed"]
        order = list(job.ctx["models"])
        rows: dict[int | None, list[tuple[int, Dream]]] = {}
        for entry in description["items"]:
            if not entry["outputs"]:
                continue
            spec, path = entry["spec"], Path(entry["outputs"][0]["path"])
            name = spec["model"]
            command = dream_command(args, input=None if spec["input"] is None else [spec["path"]],
                                    model=name if is_all(args) else args.model, seed=seed, output=str(path))
            dream = Dream(entry["label"], path, {"model": name, **job.ctx["models"][name]["settings"]}, command)
            rows.setdefault(spec["input"], []).append((order.index(name), dream))
        inputs = sorted(rows, key=lambda index: -1 if index is None else index)
        if len(job.inputs) == 1:
            title = f"{job.inputs[0].stem if job.inputs[0] is not None else 'noise'}: every model's dream"
        else:
            title = f"{len(job.inputs)} inputs, " + ("every model's dream" if is_all(args) else
                                                      f"dreamed with {', '.join(job.labels.values())}")
        failures = [f"failed: {e['key']}: {e['reason']}" for e in description["items"] if e["status"] == "failed"]
        write_dreams_page(job.folder, [DreamRow(job.inputs[i] if i is not None else None,
                                                tuple(d for _, d in sorted(rows[i], key=lambda x: x[0])))
                                       for i in inputs],
                          title=title, command=dream_command(args, seed=seed), extra=failures)
        _announce(args, job.folder / "index.html")
    return write


def write_dreams_page(folder: Path, rows: Sequence[DreamRow], *, title: str, command: str | None = None,
                      extra: Sequence[str] = ()) -> Path:
    """``folder/index.html``: each input with its dreams beside it, their settings and commands."""
    sections = []
    for row in rows:
        pictures = tuple(Picture(d.model, d.path, f"{d.path.name}: {d.model}", d.command, detail_rows(d.settings))
                         for d in row.dreams)
        source = Picture("input", row.input, f"input: {row.input.name}") if row.input is not None else None
        heading = row.title or (row.input.name if row.input is not None else "from noise")
        count = len(row.dreams)
        sections.append(Section(heading, pictures, f"{count} dream{'s' if count != 1 else ''}", source))
    return write_gallery(Gallery(title, tuple(sections), command=command, inline_commands=True, extra=tuple(extra)),
                         folder)


def page_writer(args: argparse.Namespace, job: Job) -> PageWriter | None:
    """dream.py's page for its job, if it makes several images."""
    if isinstance(job, AtlasJob):
        return atlas_page(args, job)
    if isinstance(job, SweepJob):
        return sweep_page(args, job)
    if isinstance(job, DreamJob):
        return dreams_page(args, job)
    return None


def write_video_page(output: Path, poster: Path, command: str | None, record: Mapping[str, object]) -> Path:
    """``<video stem>.html`` beside the video: its poster frame and player, its settings (the run's
    ``record``, what its resume checks) and its command."""
    details = detail_rows({k: v for k, v in record.items() if k != "version"})
    picture = Picture(output.name, poster, output.name, command, details, video=output)
    gallery = Gallery(output.name, (Section(output.name, (picture,)),), command=command, details=details,
                      intro=f"The poster is a frame from the middle of the video; every frame is in {output.stem}_frames/.")
    return write_gallery(gallery, output.parent, name=output.stem)


def _announce(args: argparse.Namespace, page: Path) -> None:
    if not args.quiet:
        print(page, flush=True)

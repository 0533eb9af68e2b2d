"""The gallery page of each job that makes several images: what it made, described for
``gallery.write_gallery`` with the command that remakes each image alone (``args.command_line``
over the job's own flags).

- ``run_atlas``: dream.py --atlas (plans, renders, and writes its page: ``deepdream/atlas.py``);
- ``write_sweep_page``: dream.py --sweep (a one-section atlas);
- ``write_dreams_page``: dreams of inputs, one row per input with each model's dream beside it
  (--model all; a batch of inputs is several rows);
- ``write_video_page``: a video's poster frame, its player and its command, as ``<video stem>.html``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from models import DreamModel

from ..atlas import CLASSES, AtlasSection, describe_atlas, plan_atlas, run_atlas as run_atlas_sections
from ..errors import Notify
from ..gallery import Gallery, Picture, Section, slug, write_gallery
from ..objectives import layer_channels, parse_channels
from ..settings import DreamSettings
from ..visualise import RenderPlan, RenderSettings
from .args import command_line, still_parser

DREAM_SCRIPT = "dream.py"
#: A fine-tuned model's class names listed at the head of its atlas, at most.
CLASSES_LISTED = 50


def _weights_label(args: argparse.Namespace, model: DreamModel) -> str:
    return f"{Path(args.weights).name} ({model.name})" if args.weights else model.name


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
            ("seed", f"{seed} (each image's own seed derives from it and the image's layer and channel or class)")]
    if args.weights and model.class_names:   # a fine-tuned model: its own classes
        names = model.class_names
        rows.insert(1, ("classes", ", ".join(names[:CLASSES_LISTED]) +
                        (f" ... ({len(names)} in all)" if len(names) > CLASSES_LISTED else "")))
    return rows


def render_remake(args: argparse.Namespace, model: DreamModel,
                  settings: RenderSettings) -> Callable[[AtlasSection, int, int], str]:
    """The command that renders item ``i`` of a section alone, with its own seed, into the current folder."""
    parser = still_parser()
    common = {"atlas": None, "sweep": None, "batch": None, "quiet": None, "class_": None, "layers": None,
              "channels": None, "width": settings.width, "height": settings.height,
              "model": args.model if args.model or args.weights else model.name}

    # --layers/--channels alone dream on noise: a render flag must say "render". --param fft does; a
    # pixel render says it with its padding, given explicitly (unless --no-robustness already says it).
    render_flag = {"param": "fft"} if settings.param == "fft" else {} if args.no_robustness else \
        {"pad": settings.robustness.pad}

    def remake(section: AtlasSection, i: int, seed: int) -> str:
        label, target = section.plan.items[i]
        item = {"class_": [str(target)]} if section.kind == "class" else \
            {"layers": [section.layer], "channels": [str(target)], **render_flag}
        return command_line(parser, args, DREAM_SCRIPT, **{**common, **item}, seed=seed,
                            output=f"{slug(label)}.png")
    return remake


def _job_command(args: argparse.Namespace) -> str:
    return command_line(still_parser(), args, DREAM_SCRIPT, quiet=None)


def run_atlas(args: argparse.Namespace, model: DreamModel, settings: RenderSettings, folder: Path,
              notify: Notify) -> Path:
    """dream.py --atlas: its sections from the flags, every check first; then the renders and the page."""
    channels = parse_channels(args.channels) if args.channels else None
    sections = plan_atlas(model, folder, layers=args.layers, channels=channels, classes=args.class_, notify=notify)
    seed = args.seed if args.seed is not None else 0
    title = f"Atlas of {Path(args.weights).name} ({model.name})" if args.weights else f"Atlas of {model.name}"
    remake = render_remake(args, model, settings)

    def describe(done: Sequence[AtlasSection]) -> Gallery:
        return describe_atlas(model, done, settings, seed, title=title,
                              details=render_details(args, model, settings, seed),
                              command=_job_command(args), remake=remake)

    return run_atlas_sections(model, sections, settings, folder, seed, describe, quiet=args.quiet, notify=notify)


def write_sweep_page(args: argparse.Namespace, model: DreamModel, settings: RenderSettings, plan: RenderPlan,
                     folder: Path) -> Path:
    """dream.py --sweep's ``index.html``: its items as one section of an atlas."""
    assert plan.sweep_term is not None
    term = plan.objective.terms[plan.sweep_term]
    count = layer_channels(model, [term.layer])[term.layer]
    title = CLASSES if term.kind == "class" else term.layer
    section = AtlasSection(title, term.layer, term.kind, count, plan, folder)
    seed = args.seed if args.seed is not None else 0
    gallery = describe_atlas(model, [section], settings, seed, title=f"Sweep of {title}, {_weights_label(args, model)}",
                             details=render_details(args, model, settings, seed), command=_job_command(args),
                             remake=render_remake(args, model, settings))
    return write_gallery(gallery, folder)


@dataclass(frozen=True)
class Dream:
    """One dream a job made: the model that dreamed it, its file, its settings and its command."""

    model: str
    path: Path
    settings: DreamSettings
    command: str


@dataclass(frozen=True)
class DreamRow:
    """An input (None: dreamed from noise) and its dreams."""

    input: Path | None
    dreams: tuple[Dream, ...]
    title: str = ""


def dream_command(args: argparse.Namespace, **changes: object) -> str:
    """The dream.py command of ``args`` with ``changes`` (e.g. one model, its output and the seed)."""
    return command_line(still_parser(), args, DREAM_SCRIPT, **{"quiet": None, **changes})


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


def write_dreams_page(folder: Path, rows: Sequence[DreamRow], *, title: str, command: str | None = None) -> Path:
    """``folder/index.html``: each input with its dreams beside it, their settings and commands."""
    sections = []
    for row in rows:
        pictures = tuple(Picture(d.model, d.path, f"{d.path.name}: {d.model}", d.command,
                                 (("model", d.model),) + detail_rows(d.settings.as_dict())) for d in row.dreams)
        source = Picture("input", row.input, f"input: {row.input.name}") if row.input is not None else None
        heading = row.title or (row.input.name if row.input is not None else "from noise")
        sections.append(Section(heading, pictures, f"{len(row.dreams)} dreams", source))
    return write_gallery(Gallery(title, tuple(sections), command=command, inline_commands=True), folder)


def write_video_page(output: Path, poster: Path, command: str | None, record: Mapping[str, object]) -> Path:
    """``<video stem>.html`` beside the video: its poster frame and player, its settings (the run's
    ``record``, what its resume checks) and its command."""
    details = detail_rows({k: v for k, v in record.items() if k != "version"})
    picture = Picture(output.name, poster, output.name, command, details, video=output)
    gallery = Gallery(output.name, (Section(output.name, (picture,)),), command=command, details=details,
                      intro=f"The poster is a frame from the middle of the video; every frame is in {output.stem}_frames/.")
    return write_gallery(gallery, output.parent, name=output.stem)

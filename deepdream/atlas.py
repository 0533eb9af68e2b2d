"""An atlas of a network: every chosen channel of every chosen layer, and its classes, rendered from
noise with the feature-visualisation recipe, into one folder with a browsable page (OpenAI
Microscope's idea, for any model here, a fine-tuned one included).

An atlas is one sweep job (``sweep.SweepJob``) of several sections (``plan_atlas``): one per
layer, its channels, and one of the model's classes, each in a folder of its own. So it has what
every job has (``jobs.run_job``): resume by record (a rerun renders only the batches still missing
an image and writes only the missing images; other settings are refused unless ``--overwrite``),
the sections' batches shared over the ranks of ``mlx.launch`` together, one progress bar, the
summary. ``AtlasJob`` adds the notice before it starts (the count and the time estimated from a
short probe of each section's renderer), and ``describe_atlas`` its page (``gallery.py``), which
the script writes from the job's report when it ends, and after Ctrl-C with what exists.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from models import DreamModel

from . import distributed as dist
from .classes import class_names
from .errors import DreamError, Notify
from .gallery import Gallery, Picture, Section, slug
from .jobs import Item, JobReport, plural
from .objectives import layer_channels
from .sweep import SweepJob, SweepSection, SweepSetup
from .visualise import Renderer, RenderPlan, plan_render

#: The section (and folder) of a model's classes.
CLASSES = "classes"
#: Steps the probe times in each section, after one step that compiles it.
PROBE_STEPS = 2


def section_of(model: DreamModel, plan: RenderPlan, folder: Path) -> SweepSection:
    """A sweep's section, titled by its layer (or "classes") and counting that layer's channels (or the
    model's classes), as its page shows it."""
    assert plan.sweep_term is not None
    term = plan.objective.terms[plan.sweep_term]
    if term.kind == "class":
        return SweepSection(plan, folder, CLASSES, len(class_names(model)))
    return SweepSection(plan, folder, term.layer, layer_channels(model, [term.layer])[term.layer])


def plan_atlas(model: DreamModel, folder: Path, *, layers: Sequence[str] | None = None,
               channels: list[int] | str | None = None, classes: Sequence[str] | None = None,
               notify: Notify = lambda message: None) -> list[SweepSection]:
    """The sections of an atlas, in network order, every check done (before any work).

    ``layers``: names, ``["all"]`` for every layer, or None: the model's dream layers, unless
    ``classes`` alone are asked for. ``channels``: indices kept in each layer (a layer with fewer
    keeps those it has), or None / "all". ``classes``: ``--class`` values (names, indices, ranges,
    ``all``), or None.
    """
    if layers is not None and [name.lower() for name in layers] == ["all"]:
        layers = model.layer_names
    elif layers is None:
        if channels is not None and channels != "all":
            raise DreamError("--channels needs --layers to say whose channels; e.g. --layers block10 --channels 0-15")
        layers = [] if classes is not None else model.default_layers
    model.check_layers(list(layers), allow_logits=False)
    order = {name: i for i, name in enumerate(model.layer_names)}
    layers = sorted(dict.fromkeys(layers), key=lambda name: order.get(name, len(order)))
    counts = layer_channels(model, layers) if layers else {}
    sections: list[SweepSection] = []
    clipped: list[str] = []
    for layer in layers:
        chosen = list(range(counts[layer])) if channels in (None, "all") else \
            [c for c in channels if c < counts[layer]]
        if not chosen:
            raise DreamError(f"layer '{layer}' has {counts[layer]} channels, none of --channels "
                             f"{_ranges(channels)}; use channels from 0 to {counts[layer] - 1}")
        if channels not in (None, "all") and len(chosen) < len(channels):
            clipped.append(f"{layer} ({counts[layer]})")
        plan = plan_render(model, layers=[layer], channels=chosen, sweep=True)
        sections.append(SweepSection(plan, folder / slug(layer), layer, counts[layer]))
    if clipped:
        notify(f"some layers have fewer channels than --channels asks for; they get those they have: "
               f"{', '.join(clipped)}")
    if classes is not None:
        sections.append(section_of(model, plan_render(model, class_spec=list(classes), sweep=True), folder / CLASSES))
    if not sections:
        raise DreamError("nothing to put in the atlas: give --layers (or 'all') and/or --class all")
    return sections


def _ranges(values: Sequence[int]) -> str:
    return f"{min(values)}-{max(values)}" if len(values) > 1 else str(values[0])


# -- the estimate ----------------------------------------------------------------------------------

def probe(renderer: Renderer, section: SweepSection, members: Sequence[int], seed: int | None,
          steps: int = PROBE_STEPS, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds (of ``clock``) one render step of the batch ``members`` (indices into the section's
    items) takes here: one step compiles the renderer for that batch size (work the atlas does
    anyway), then ``steps`` are timed."""
    targets, seeds = section.batch(members, seed)

    def run(count: int) -> None:
        renderer.render(len(seeds), targets, [np.random.default_rng(s) for s in seeds], progress=False, steps=count)

    run(1)
    start = clock()
    run(steps)
    return (clock() - start) / steps


def format_duration(seconds: float) -> str:
    if seconds < 0.5:
        return "under a second"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    return f"{hours / 24:.1f} days"


# -- the job ---------------------------------------------------------------------------------------

class AtlasJob(SweepJob):
    """An atlas: a sweep of its sections (see the module), with the estimate before it starts."""

    noun = "image"
    sheets = False   # the page is its contact sheet
    announce = False  # thousands of files: the page lists them

    def __init__(self, setup: SweepSetup, folder: Path, batch: int, *, weights: str | None = None,
                 seed: int | None, overwrite: bool = False) -> None:
        super().__init__(setup, batch, weights=weights, seed=seed, overwrite=overwrite)
        self.folder = folder

    def where(self) -> str:
        return str(self.folder)

    def notice(self, todo: Sequence[Item], kept: int) -> str:
        """The count, and the time the batches to make take at this machine's measured speed: each
        section's largest batch to make, probed, scaled by its images for the others."""
        model, settings, sections = self.built()
        total = sum(len(s.plan.items) for s in sections)
        renders = sum(len(item.outputs) for item in todo)
        seconds = 0.0
        for s in sorted({item.spec["section"] for item in todo}):
            units = [item for item in todo if item.spec["section"] == s]
            largest = max(units, key=lambda item: len(item.outputs)).spec["members"]
            per_image = probe(self.renderer(s), sections[s], largest, self.seed) / len(largest)
            seconds += per_image * settings.steps * sum(len(item.outputs) for item in units)
        missing = total - kept
        before = f" ({kept:,} already in {self.folder})" if kept else ""
        whole = f" (with the rest of their batches: {renders:,} renders)" if renders > missing else ""
        steps, count = plural("step", settings.steps), len(sections)
        where = f"over {dist.describe()}" if dist.size() > 1 else "on this machine"
        return (f"atlas of {model.name}: {total:,} images in {count} {plural('section', count)}{before}; "
                f"{missing:,} to render{whole} at {settings.width}x{settings.height} px, {settings.steps} {steps} "
                f"each: about {format_duration(seconds / dist.size())} {where} (measured: a {PROBE_STEPS}-step "
                f"probe of each unfinished section, {self.batch} images a batch)")

    def interrupted(self, kept: int, total: int) -> str:
        return (f"{kept:,} of {total:,} images are in {self.folder} (its index.html shows them); run the same "
                "command to continue")


# -- the page --------------------------------------------------------------------------------------

#: The command that remakes the batch ``members`` (indices into the section's items) of a section.
Remake = Callable[[SweepSection, list[int]], str]


def describe_atlas(job: SweepJob, report: JobReport, *, title: str, details: Sequence[tuple[str, str]],
                   command: str | None, remake: Remake) -> Gallery:
    """The page of an atlas (or of a sweep: one section) from its job's report: every image finished,
    in network and section order, with its layer and channel or class, its seed, and
    ``remake(section, batch)``, the command that renders its batch again, the same bytes."""
    model, settings, sections = job.built()
    done = {o["path"] for i in report.description()["items"] for o in i["outputs"]}
    out = []
    for section in sections:
        seeds, paths = section.seeds(job.seed), section.paths
        pictures = []
        for members in section.units(job.batch):
            command_of_batch = remake(section, members)
            for i in members:
                (label, target), path = section.plan.items[i], paths[i]
                if str(path) not in done:
                    continue
                if section.kind == "class":
                    heading, caption = label, label
                    rows = (("class", label), ("index", f"{target} of {section.count}"))
                else:
                    heading, caption = f"{section.layer} channel {target}", str(target)
                    rows = (("layer", section.layer), ("channel", f"{target} of {section.count}"))
                note = "" if len(members) == 1 else (
                    f"It was rendered in a batch of {len(members)}, and a render is the same bytes only in a batch "
                    f"of the same size, so this command remakes the whole batch: this image is {path.name} in "
                    "the folder it names.")
                pictures.append(Picture(caption, path, heading, command_of_batch,
                                        rows + (("model", model.name), ("seed", str(seeds[i]))), command_note=note))
        noun = "classes" if section.kind == "class" else "channels"
        shown = len(section.plan.items)
        note = f"{section.count:,} {noun}" + (f", {shown:,} shown" if shown < section.count else "")
        out.append(Section(section.title, tuple(pictures), note))
    return Gallery(title, tuple(out), details=tuple(details), command=command,
                   intro=f"Rendered from noise, {settings.width}x{settings.height} px, {settings.steps} steps "
                         f"each. Click an image for its page, with the command that renders it again.")

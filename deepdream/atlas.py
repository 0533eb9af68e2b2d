"""An atlas of a network: every chosen channel of every chosen layer, and its classes, rendered from
noise with the feature-visualisation recipe, into one folder with a browsable page (OpenAI
Microscope's idea, for any model here, a fine-tuned one included).

An atlas is a list of sections (``AtlasSection``), each a sweep (``sweep.py``): one layer's
channels, or the model's classes, rendered into a folder of its own by ``sweep.run_sweep``,
which gives the atlas its resume (an item whose file exists is not rendered again) and its
per-item seeds. ``run_atlas`` adds what a job of many sweeps needs: the count and the estimated
time before it starts (from a short probe of each section's renderer), one progress bar, and
the page (``gallery.py``), written at the end and when interrupted.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models import DreamModel

from .classes import class_list, class_names
from .errors import DreamError, Interrupted, Notify
from .gallery import Gallery, Picture, Section, slug, write_gallery
from .image_io import check_writable_folder
from .objectives import layer_channels
from .sweep import run_sweep, sweep_paths, sweep_seeds
from .visualise import Renderer, RenderPlan, RenderSettings, plan_render

#: The section (and folder) of a model's classes.
CLASSES = "classes"
#: Steps the probe times in each section, after one step that compiles it.
PROBE_STEPS = 2


@dataclass(frozen=True)
class AtlasSection:
    """One layer's channels (``kind`` "channel") or the model's classes ("class"), as a sweep."""

    title: str
    layer: str          # the layer read ("logits" for classes)
    kind: str
    count: int          # the layer's channels, or the model's classes
    plan: RenderPlan    # the items rendered, (label, channel or class index)
    folder: Path

    @property
    def paths(self) -> list[Path]:
        return sweep_paths(self.plan, self.folder)

    def missing(self) -> int:
        return sum(not p.is_file() for p in self.paths)


def plan_atlas(model: DreamModel, folder: Path, *, layers: Sequence[str] | None = None,
               channels: list[int] | str | None = None, classes: Sequence[str] | None = None,
               notify: Notify = lambda message: None) -> list[AtlasSection]:
    """The sections of an atlas, in network order, every check done (before any work).

    ``layers``: names, ``["all"]`` for every layer, or None: the model's dream layers, unless
    ``classes`` alone are asked for. ``channels``: indices kept in each layer (a layer with fewer
    keeps those it has), or None / "all". ``classes``: ``class_list``'s specs, or None.
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
    sections: list[AtlasSection] = []
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
        sections.append(AtlasSection(layer, layer, "channel", counts[layer], plan, folder / slug(layer)))
    if clipped:
        notify(f"some layers have fewer channels than --channels asks for; they get those they have: "
               f"{', '.join(clipped)}")
    if classes is not None:
        names = class_names(model)
        chosen = class_list(names, list(classes))
        every = plan_render(model, class_spec="all", sweep=True)
        plan = RenderPlan(every.objective, [every.items[i] for i in chosen], every.sweep_term)
        sections.append(AtlasSection(CLASSES, "logits", "class", len(names), plan, folder / CLASSES))
    if not sections:
        raise DreamError("nothing to put in the atlas: give --layers (or 'all') and/or --class all")
    return sections


def _ranges(values: Sequence[int]) -> str:
    return f"{min(values)}-{max(values)}" if len(values) > 1 else str(values[0])


# -- the estimate ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Estimate:
    seconds: float
    how: str        # how it was measured, for the notice


def probe(renderer: Renderer, section: AtlasSection, batch: int, seed: int | None, steps: int = PROBE_STEPS,
          clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds (of ``clock``) one render step of a full batch of ``section`` takes here: one step
    compiles the renderer (work the atlas would do anyway), then ``steps`` steps are timed."""
    n = min(batch, len(section.plan.items))
    rows = np.array([[target] for _, target in section.plan.items[:n]], np.int32)
    targets = section.plan.objective.with_targets(section.plan.sweep_term, rows).targets()
    seeds = sweep_seeds(section.plan, seed)[:n]

    def run(steps: int) -> None:
        renderer.render(n, targets, [np.random.default_rng(s) for s in seeds], progress=False, steps=steps)

    run(1)
    start = clock()
    run(steps)
    return (clock() - start) / steps


def estimate(renderers: dict[int, Renderer], sections: Sequence[AtlasSection], settings: RenderSettings,
             seed: int | None) -> Estimate:
    """The wall time of what is left: each unfinished section's batches x steps x its probed step time."""
    total = 0.0
    for index, renderer in renderers.items():
        section = sections[index]
        batches = math.ceil(section.missing() / settings.batch)
        total += batches * settings.steps * probe(renderer, section, settings.batch, seed)
    return Estimate(total, f"a {PROBE_STEPS}-step probe of each unfinished section, {settings.batch} images a batch")


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


# -- the run ---------------------------------------------------------------------------------------

#: Makes the description of the page from the sections (``describe``, with the job's commands).
Describe = Callable[[Sequence[AtlasSection]], Gallery]


def run_atlas(model: DreamModel, sections: Sequence[AtlasSection], settings: RenderSettings, folder: Path,
              seed: int | None, describe: Describe, *, quiet: bool = False,
              notify: Notify = lambda message: None) -> Path:
    """Render what the sections still lack, with a notice of the count and the time first and one
    progress bar, then write the page; returns the page's path."""
    check_writable_folder(folder)
    for section in sections:
        check_writable_folder(section.folder)
    total = sum(len(s.plan.items) for s in sections)
    missing = [s.missing() for s in sections]
    todo = sum(missing)
    renderers = {i: Renderer(model, s.plan.objective, settings) for i, s in enumerate(sections) if missing[i]}
    if todo:
        guess = estimate(renderers, sections, settings, seed)
        done = f" ({total - todo:,} already in {folder})" if todo < total else ""
        steps = f"{settings.steps} step{'s' if settings.steps > 1 else ''}"
        notify(f"atlas of {model.name}: {total:,} images in {len(sections)} sections{done}; {todo:,} to render at "
               f"{settings.width}x{settings.height} px, {steps} each: about {format_duration(guess.seconds)} on "
               f"this machine (measured: {guess.how})")
    try:
        with tqdm(total=total, initial=total - todo, desc="atlas", unit="image", disable=quiet or not todo,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            for index, renderer in renderers.items():
                section = sections[index]
                run_sweep(renderer, section.plan, section.folder, settings.batch, seed, bar=bar, sheet=False)
    except Interrupted:
        write_gallery(describe(sections), folder)
        left = sum(s.missing() for s in sections)
        raise Interrupted(f"{total - left:,} of {total:,} images are in {folder} (its index.html shows them); "
                          "run the same command to continue") from None
    return write_gallery(describe(sections), folder)


# -- the page --------------------------------------------------------------------------------------

def describe_atlas(model: DreamModel, sections: Sequence[AtlasSection], settings: RenderSettings,
                   seed: int | None, *, title: str, details: Sequence[tuple[str, str]],
                   command: str | None, remake: Callable[[AtlasSection, int, int], str]) -> Gallery:
    """The page of an atlas (or of a sweep: one section): each section's pictures with their
    layer and channel or class, seed, and ``remake(section, item, seed)``, the command that
    renders that item alone."""
    out = []
    for section in sections:
        seeds = sweep_seeds(section.plan, seed)
        pictures = []
        for i, ((label, target), path) in enumerate(zip(section.plan.items, section.paths)):
            if section.kind == "class":
                heading, caption = label, label
                rows = (("class", label), ("index", f"{target} of {section.count}"))
            else:
                heading, caption = f"{section.layer} channel {target}", str(target)
                rows = (("layer", section.layer), ("channel", f"{target} of {section.count}"))
            pictures.append(Picture(caption, path, heading, remake(section, i, seeds[i]),
                                    rows + (("model", model.name), ("seed", str(seeds[i])))))
        noun = "classes" if section.kind == "class" else "channels"
        shown = len(section.plan.items)
        note = f"{section.count:,} {noun}" + (f", {shown:,} shown" if shown < section.count else "")
        out.append(Section(section.title, tuple(pictures), note))
    return Gallery(title, tuple(out), details=tuple(details), command=command,
                   intro=f"Rendered from noise, {settings.width}x{settings.height} px, {settings.steps} steps "
                         f"each. Click an image for its page, with the command that renders it alone.")

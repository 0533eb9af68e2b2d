"""The dream loop: octaves of steps over an image (``Dreamer``, and the one-call ``dream``).

Octaves follow the 2015 notebook: the image is shrunk ``octaves - 1`` times by ``scale``, the
smallest is dreamed first, and only the *detail* (dreamed minus base) is upscaled and added
to the next larger base, so the photo's own pixels are never blurred by resampling. Each
octave is dreamed whole (``step.DreamStep``) or in tiles (``tiling.TiledStep``), as its memory
plan says (``memory``).
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import mlx.core as mx
import numpy as np
from tqdm import tqdm

from models import DreamModel

from . import memory, transforms
from .colour import make_space
from .errors import DreamError, make_notify
from .image_io import load_image
from .loading import load_dream_model
from .objectives import build_objective
from .progress import StepCounter
from .settings import DreamSettings
from .step import DreamStep, make_step
from .tiling import TiledStep

#: The guide image is analysed at most this large (longest side): its features are matched
#: per position, so a bigger guide only costs time.
GUIDE_MAX_SIZE = 512


class Dreamer:
    """A model + settings, ready to dream any number of images (video frames reuse the compiled step).

    ``Dreamer(model, settings)(rgb)`` -> dreamed rgb, both float32 (H, W, 3) in [0, 1].
    Construction validates everything (layers, channels, guide, colour matrix, tile size), so
    errors surface before any work is done. Each octave is dreamed whole when it fits the memory
    budget, else in tiles (``memory.Planner``); a dream that cannot fit fails before its first step.
    """

    def __init__(self, model: DreamModel, settings: DreamSettings, *, quiet: bool = False,
                 notify: Callable[[str], None] | None = None, guide: np.ndarray | None = None) -> None:
        """``guide``: ``settings.guide`` already read (on a rank whose host does not hold the file)."""
        settings.validate()
        self.model = model
        self.settings = settings
        self.quiet = quiet
        self._notify = notify or make_notify(quiet)
        self._noticed: set[str] = set()
        min_size = model.MIN_INPUT_SIZE
        if settings.tile_size and settings.tile_size < 2 * min_size:
            # Tiles are split evenly, so some can be just over half the tile size.
            raise DreamError(f"--tile-size {settings.tile_size} is too small for {model.name}; "
                             f"use at least {2 * min_size} (512 is a good choice)")
        layers = list(settings.layers) if settings.layers else model.default_layers
        guide_rgb = guide
        if settings.guide is not None and guide_rgb is None:
            guide_rgb = load_image(settings.guide, max_size=GUIDE_MAX_SIZE, what="guide image")
        if guide_rgb is not None:
            if min(guide_rgb.shape[:2]) < min_size:
                raise DreamError(f"guide image '{settings.guide}' is {guide_rgb.shape[1]}x{guide_rgb.shape[0]}; "
                                 f"{model.name} needs at least {min_size} px on each side")
        self.layers = tuple(layers)
        self.objective = build_objective(model, layers, settings.channels, guide_rgb)
        self.space = make_space(model, settings.decorrelate)
        self.step = make_step(model, self.objective, self.space, grad_norm=settings.grad_norm,
                              lap_norm=settings.lap_norm, smooth=settings.smooth)
        self.memory = memory.Planner(self.step, settings.tile_size, settings.max_memory, self.notice)
        self._tiled: dict[int, TiledStep] = {}

    def notice(self, message: str) -> None:
        """Tell the user once (video frames would otherwise repeat it every frame)."""
        if message not in self._noticed:
            self._noticed.add(message)
            self._notify(message)

    def octave_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Octave sizes, smallest first, with fewer octaves if the smallest would be below the model's minimum."""
        s = self.settings
        min_size = self.model.MIN_INPUT_SIZE
        if min(height, width) < min_size:
            raise DreamError(f"the image is {width}x{height} but {self.model.name} needs at least {min_size} px "
                             "on each side; use a larger image (or a larger --max-size)")
        count = transforms.max_octaves(height, width, s.scale, min_size, s.octaves)
        if count < s.octaves:
            self.notice(f"{s.octaves} octaves at scale {s.scale:g} would shrink {width}x{height} below "
                        f"{self.model.name}'s minimum of {min_size} px; using {count}")
        return transforms.octave_sizes(height, width, count, s.scale)

    # -- memory: the planner decides how each octave is dreamed --------------------------------------

    def plan(self, height: int, width: int, last: bool = True) -> memory.OctavePlan:
        """How the octave of this size is dreamed (``last``: the full-size one, whose base the caller holds)."""
        return self.memory.plan(height, width, last)

    def profile(self) -> memory.Profile:
        """The step's memory per pixel (cached; measured on first use)."""
        return self.memory.profile()

    def runner(self, plan: memory.OctavePlan) -> DreamStep | TiledStep:
        if plan.tile is None:
            return self.step
        if plan.tile not in self._tiled:
            self._tiled[plan.tile] = TiledStep(self.step, plan.tile)
        return self._tiled[plan.tile]

    # -- the octave loop -----------------------------------------------------------------------------

    def __call__(self, image: np.ndarray, *, rng: np.random.Generator | None = None,
                 progress: bool | None = None, description: str | None = None,
                 snapshot: Callable[[np.ndarray], None] | None = None, save_every: int | None = None) -> np.ndarray:
        """Dream ``image`` (float32 (H, W, 3) in [0, 1]); ``rng`` drives the jitter (seeded from settings if None).

        ``snapshot(rgb)`` receives the image so far, at full size, every ``save_every`` steps and at
        the end of each octave but the last (whose result is the return value).
        """
        s = self.settings
        if image.ndim != 3 or image.shape[2] != 3:
            raise DreamError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
        rng = rng if rng is not None else np.random.default_rng(s.seed)
        base = np.asarray(image, dtype=np.float32)
        sizes = self.octave_sizes(base.shape[0], base.shape[1])
        # Every octave's plan first, the full size's first of all: a dream that cannot fit the
        # budget fails before any step, naming the size that does not fit.
        plans = [self.plan(h, w, last=index == len(sizes) - 1) for index, (h, w) in reversed(list(enumerate(sizes)))]
        plans.reverse()
        auto_tiled = [p for p in plans if p.tile is not None and not np.isnan(p.predicted)]
        if auto_tiled:
            self.notice(self.memory.tiling_notice(auto_tiled))
        show = (not self.quiet) if progress is None else progress
        detail: np.ndarray | None = None
        with tqdm(total=len(sizes) * s.steps, desc=description or self.model.name, unit="step",
                  disable=not show, file=sys.stderr, dynamic_ncols=True) as bar:
            counter = StepCounter(bar)
            for index, ((h, w), plan) in enumerate(zip(sizes, plans)):
                # Few image-sized arrays at a time (the memory plan counts them): the start is built
                # in place, and a tiled octave's state is that same array.
                octave_base = base if (h, w) == base.shape[:2] else transforms.resize(base, h, w)
                if detail is None:
                    start = octave_base.copy()
                else:
                    start = transforms.resize(detail, h, w)
                    detail = None
                    start += octave_base
                np.clip(start, 0.0, 1.0, out=start)
                runner = self.runner(plan)
                state = runner.encode(start)
                del start
                bar.set_postfix_str(f"octave {index + 1}/{len(sizes)} {w}x{h}"
                                    + (f", {plan.tile_count} tiles" if plan.tile else ""))
                for i in range(s.steps):
                    shift = rng.integers(-s.jitter, s.jitter + 1, size=2) if s.jitter else np.zeros(2, np.int64)
                    if plan.tile:
                        # Move the tile seams anywhere (TF tutorial), or small jitters would leave them in place.
                        shift = shift + rng.integers(0, plan.tile, size=2)
                    sigma = transforms.smoothing_sigma(i, s.steps, s.smoothing)
                    with counter.step():        # the first one compiles: its time is not in the ETA
                        state, _ = runner(state, (int(shift[0]), int(shift[1])), sigma, s.lr)
                    if snapshot is not None and save_every and (i + 1) % save_every == 0 and i + 1 < s.steps:
                        snapshot(self._full_size(runner.decode(_copy(state)), octave_base, base))
                result = runner.decode(state)
                del state
                if index + 1 < len(sizes):
                    if snapshot is not None:
                        snapshot(self._full_size(result, octave_base, base))
                    detail = result
                    detail -= octave_base
                    del result
        return np.clip(result, 0.0, 1.0, out=result)

    @staticmethod
    def _full_size(result: np.ndarray, octave_base: np.ndarray, base: np.ndarray) -> np.ndarray:
        """An octave's image at the final size: its detail upscaled onto the original, as the next octave starts."""
        h, w = base.shape[:2]
        return np.clip(base + transforms.resize(result - octave_base, h, w), 0.0, 1.0).astype(np.float32)


def _copy(state: mx.array | np.ndarray) -> mx.array | np.ndarray:
    """A snapshot's own copy of the state (a tiled state is decoded in place)."""
    return state.copy() if isinstance(state, np.ndarray) else state


def dream(model: DreamModel, image: np.ndarray, settings: DreamSettings | None = None, *,
          quiet: bool = True, rng: np.random.Generator | None = None) -> np.ndarray:
    """One-call API: dream ``image`` (float32 RGB (H, W, 3) in [0, 1]) with ``settings``."""
    return Dreamer(model, settings or DreamSettings(), quiet=quiet)(image, rng=rng)


# -- on several ranks -------------------------------------------------------------------------------

def guide_payload(settings: DreamSettings) -> str | None:
    """The guide image's file (base64) for a job's context, or None without a guide: a rank on a host
    without the file reads the guide from it (``dreamer_on_rank``)."""
    return None if settings.guide is None else base64.b64encode(Path(settings.guide).read_bytes()).decode()


def dreamer_on_rank(model_name: str, weights: str | None, settings: Mapping[str, object], guide: str | None,
                    notify: Callable[[str], None]) -> Dreamer:
    """A job's dreamer on a rank that did not build its own: the model, the settings as a job's context
    carries them (``DreamSettings.as_dict``) and the guide as ``guide_payload`` sent it."""
    values = DreamSettings.from_dict(settings)
    guide_rgb = None if guide is None else load_image(values.guide, max_size=GUIDE_MAX_SIZE, what="guide image",
                                                      data=base64.b64decode(guide))
    return Dreamer(load_dream_model(model_name, weights), values, quiet=True, notify=notify, guide=guide_rgb)

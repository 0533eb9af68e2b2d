"""The memory budget: predict a dream's peak memory and tile just enough to stay under it.

A dream step's memory grows with the pixels it sees (the network's activations and their
gradients), at a rate that depends on the model and its layers. Rather than guess that rate,
``measure_profile`` runs the compiled step on two small images and reads the process's own
peak memory each time: the difference is the cost per pixel, the rest a fixed overhead. The
result is cached on disk per model, layer set and step shape (``profile_key``), so only a
model's first big dream pays for it.

``plan_octave`` then predicts an octave's peak (what is resident now + the step's overhead +
its per-pixel cost over the pixels one gradient sees + the image-sized arrays the loop keeps),
and picks the whole image when that fits the budget, else the largest tile that does, else a
one-line error naming the flags that change the outcome. A ``Planner`` does both for one dream
step: its budget, its profile, and a cached plan per octave size.

The peak is read where it can be reset: Linux's ``VmHWM`` (``/proc/self/clear_refs``), which
counts every allocation (MLX's, numpy's, the native kernels' scratch); elsewhere MLX's own
allocator peak.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import platform
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from . import transforms
from .cache import cache_dir
from .errors import DreamError
from .step import DreamStep

#: Default budget: this share of the machine's memory, and never more than the cap (bigger tiles
#: buy no speed, so a larger budget is only taken when asked for with --max-memory).
DEFAULT_SHARE = 0.25
DEFAULT_CAP = int(3.5 * 2**30)
#: Square sides of the two profiling runs: big enough that allocator granularity stays small next
#: to the per-pixel cost, small enough to be quick on any model.
PROFILE_SIDES = (320, 512)
#: A bound on any model's per-pixel cost, far above the zoo's: an octave this small fits the budget
#: without a profile (small images and tests never pay for one).
UNPROFILED_BYTES_PER_PIXEL = 16_000
#: Tiles are sized in steps of this many pixels: near sizes would cost the same, and a coarse grid
#: keeps the choice stable when the resident memory moves a little between runs.
TILE_STEP = 32
#: The smallest tile tried: below it, the per-tile overhead costs more than memory saves.
MIN_TILE = 256
FLOAT_RGB = 3 * 4  # bytes per pixel of one float32 RGB image
PROFILE_VERSION = 2

_UNITS = {"": 1e9, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """``6GB``, ``6.5 GB``, ``500MB``, ``4GiB`` (a bare number means GB) -> bytes; ValueError otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"'{text}' is not a memory size; write it like 6GB or 500MB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_bytes(count: float) -> str:
    """In the decimal units --max-memory is written in (6GB is 6e9 bytes), small sizes too: 3.8 GB, 300 MB,
    1.0 kB, 900 bytes."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            value = count / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{count:.0f} bytes"


def total_memory() -> int:
    """The machine's physical memory in bytes (or the GPU's, when MLX runs there and reports it)."""
    if mx.default_device() == mx.gpu:
        size = mx.device_info().get("memory_size")
        if size:
            return int(size)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_budget() -> int:
    return min(int(total_memory() * DEFAULT_SHARE), DEFAULT_CAP)


# -- reading the process's memory ---------------------------------------------------------------

class Probe:
    """The memory a dream is judged by: resident now, and the peak since ``reset_peak``."""

    name = "mlx"

    def release(self) -> None:
        """Hand freed memory back, so what is resident is what is in use (the measurement's baseline)."""
        mx.clear_cache()

    def resident(self) -> int:
        return mx.get_active_memory()

    def reset_peak(self) -> None:
        mx.reset_peak_memory()

    def peak(self) -> int:
        return mx.get_peak_memory()


class LinuxProbe(Probe):
    """The process's resident set (``VmRSS``) and its resettable high-water mark (``VmHWM``)."""

    name = "linux-rss"

    def __init__(self) -> None:
        try:
            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except OSError:  # a libc without it (musl): freed memory just stays mapped a little longer
            self._trim = None

    def release(self) -> None:
        super().release()
        if self._trim is not None:
            self._trim(0)

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as status:
            return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.M).group(1)) * 1024

    def resident(self) -> int:
        return self._status("VmRSS")

    def reset_peak(self) -> None:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")

    def peak(self) -> int:
        return self._status("VmHWM")


def make_probe() -> Probe:
    if sys.platform.startswith("linux") and mx.default_device() == mx.cpu and os.access("/proc/self/clear_refs", os.W_OK):
        return LinuxProbe()
    return Probe()


# -- the per-pixel cost, measured once per model and layer set -----------------------------------

@dataclass(frozen=True)
class Profile:
    """Peak memory above what was resident, ``overhead + bytes_per_pixel * pixels``, of a whole-image
    step and of one tile's gradient (a tiled step's update works on small blocks, so it is not counted)."""

    bytes_per_pixel: float
    overhead: float
    tile_bytes_per_pixel: float
    tile_overhead: float
    #: Per pixel of a whole-image update on its own (measured only when a tiled step still needs one).
    update_bytes_per_pixel: float = 0.0

    def step_bytes(self, pixels: int) -> float:
        return self.overhead + self.bytes_per_pixel * pixels

    def tile_bytes(self, pixels: int) -> float:
        return self.tile_overhead + self.tile_bytes_per_pixel * pixels


def _slope(run: Callable[[int], None], probe: Probe, sides: tuple[int, int]) -> tuple[float, float]:
    """(bytes per pixel, overhead) of ``run(side)`` on side x side images: peaks at two sizes.

    The smaller size runs twice and only the second counts: the first traces the compiled graphs.
    """
    small, large = sides
    run(small)
    probe.release()
    before = probe.resident()
    peaks = []
    for side in (small, large):
        probe.release()
        probe.reset_peak()
        run(side)
        peaks.append(probe.peak())
    probe.release()
    slope = max(0.0, (peaks[1] - peaks[0]) / (large * large - small * small))
    return slope, max(0.0, peaks[0] - before - slope * small * small)


def measure_profile(run_step: Callable[[int], None], run_tile: Callable[[int], None], probe: Probe,
                    run_update: Callable[[int], None] | None = None, sides: tuple[int, int] = PROFILE_SIDES) -> Profile:
    """``run_step(side)`` dreams one step on a side x side image, ``run_tile(side)`` takes one tile's
    gradient; ``run_update(side)`` (optional) runs only the whole-image update, for steps whose tiled
    form still updates the whole image."""
    update = _slope(run_update, probe, sides)[0] if run_update is not None else 0.0
    return Profile(*_slope(run_step, probe, sides), *_slope(run_tile, probe, sides), update)


def cache_path() -> Path:
    return cache_dir() / "memory-profiles.json"


def profile_key(*parts: object) -> str:
    """What a profile depends on: the step's shape (passed in by the caller), MLX, the machine, the probe."""
    return "|".join([str(p) for p in parts] + [f"mlx {mx.__version__}", platform.machine(), f"v{PROFILE_VERSION}"])


def load_profile(key: str) -> Profile | None:
    try:
        entry = json.loads(cache_path().read_text()).get(key)
        return Profile(**entry) if entry else None
    except (OSError, ValueError, TypeError):
        return None  # no cache yet, or one this version cannot read: measure again


def save_profile(key: str, profile: Profile) -> None:
    from models.weights import atomic_write

    path = cache_path()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    cached[key] = asdict(profile)
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(cached, indent=1)), suffix=".json")
    except OSError:
        pass  # a read-only cache folder costs a profile per run, nothing more


# -- the plan ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OctavePlan:
    """How one octave is dreamed: whole (``tile is None``) or in tiles, with the predicted peak in bytes."""

    height: int
    width: int
    tile: int | None
    predicted: float
    whole: float

    @property
    def tile_shape(self) -> tuple[int, int]:
        return tile_shape(self.height, self.width, self.tile)

    @property
    def tile_count(self) -> int:
        if self.tile is None:
            return 1
        return len(transforms.tile_bounds(self.height, self.tile)) * len(transforms.tile_bounds(self.width, self.tile))


def tile_shape(height: int, width: int, tile: int | None) -> tuple[int, int]:
    """The largest tile's (height, width) when ``tile_bounds`` splits the image (the image itself untiled)."""
    if tile is None:
        return height, width
    return (max(b - a for a, b in transforms.tile_bounds(height, tile)),
            max(b - a for a, b in transforms.tile_bounds(width, tile)))


def fits_unprofiled(resident: int, height: int, width: int, budget: int) -> bool:
    """True when the octave fits even at a per-pixel cost no model reaches (no profile needed)."""
    return resident + UNPROFILED_BYTES_PER_PIXEL * height * width <= budget


def predict(profile: Profile, resident: int, height: int, width: int, tile: int | None, *,
            image_copies: float, extra_bytes_per_pixel: float = 0.0) -> float:
    """Peak bytes of an octave: resident + the step on one gradient's pixels + the loop's image-sized arrays.

    ``image_copies`` counts the float32 RGB arrays of the octave's size the loop holds besides the
    step's own; ``extra_bytes_per_pixel`` what else grows with the whole image (a whole-image update).
    """
    tile_h, tile_w = tile_shape(height, width, tile)
    step = profile.step_bytes(height * width) if tile is None else profile.tile_bytes(tile_h * tile_w)
    return resident + step + (image_copies * FLOAT_RGB + extra_bytes_per_pixel) * height * width


def plan_octave(profile: Profile, resident: int, height: int, width: int, budget: int, *, min_tile: int,
                whole_copies: float, tiled_copies: float, tiled_extra: float = 0.0,
                what: str = "the dream") -> OctavePlan:
    """The whole image if it fits ``budget``, else the largest tile (a multiple of ``TILE_STEP``) that
    does; a DreamError naming the flags when not even the smallest tile fits."""
    whole = predict(profile, resident, height, width, None, image_copies=whole_copies)
    if whole <= budget:
        return OctavePlan(height, width, None, whole, whole)
    smallest = max(MIN_TILE, min_tile)
    largest = max(height, width)
    tile = (largest // TILE_STEP) * TILE_STEP
    while tile >= smallest:
        need = predict(profile, resident, height, width, tile, image_copies=tiled_copies,
                       extra_bytes_per_pixel=tiled_extra)
        if need <= budget and tile < largest:
            return OctavePlan(height, width, tile, need, whole)
        tile -= TILE_STEP
    need = predict(profile, resident, height, width, smallest, image_copies=tiled_copies,
                   extra_bytes_per_pixel=tiled_extra)
    raise DreamError(f"{what} at {width}x{height} needs about {format_bytes(need)} even in "
                     f"{smallest}-px tiles, over the {format_bytes(budget)} memory budget; raise it with "
                     f"--max-memory (e.g. --max-memory {math.ceil(need / 1e9)}GB) or shrink the image with --max-size")


# -- the planner: one dream's budget, profile and plans ---------------------------------------------

class Planner:
    """How a dream step's octaves are dreamed: whole, or in tiles that keep the peak within the budget.

    ``tile_size`` is the user's choice (None: the budget decides; 0: never tile; a size: always
    that tile), ``max_memory`` the budget in bytes (None: ``default_budget()``). Plans are cached
    per octave size; the profile is measured on first need and cached on disk (``profile_key``).
    """

    def __init__(self, step: DreamStep, tile_size: int | None, max_memory: int | None,
                 notice: Callable[[str], None]) -> None:
        self.step = step
        self.tile_size = tile_size
        self.budget = max_memory or default_budget()
        self.probe = make_probe()
        self._notice = notice
        self._profile: Profile | None = None
        self._plans: dict[tuple[int, int, bool], OctavePlan] = {}

    def profile_key(self) -> str:
        """What this step's memory per pixel depends on: the model, the objective, the update's shape."""
        step = self.step
        model = step.model
        return profile_key(model.name, len(model.class_names or ()) or "", step.objective.key,
                           f"space={type(step.space).__name__}", f"lap={step.lap_norm}", f"smooth={step.smooth}",
                           self.probe.name)

    def profile(self) -> Profile:
        """The step's memory per pixel: from the cache, else measured now (once per model and objective)."""
        if self._profile is None:
            key = self.profile_key()
            self._profile = load_profile(key)
            if self._profile is None:
                self._notice(f"measuring {self.step.model.name}'s memory per pixel for these layers (once; it is cached)")
                # The Laplacian normalisation updates the whole image at once, tiled or not: measure that too.
                update = self._profile_update if self.step.lap_norm else None
                self._profile = measure_profile(self._profile_run, self._profile_tile, self.probe, update)
                save_profile(key, self._profile)
        return self._profile

    # The profile's runs: each makes its own side x side state, so its arrays are part of the peak measured.
    def _profile_state(self, side: int) -> mx.array:
        return self.step.encode(np.random.default_rng(0).random((side, side, 3), dtype=np.float32))

    def _profile_run(self, side: int) -> None:
        self.step(self._profile_state(side), (0, 0), 1.0, 0.0)

    def _profile_tile(self, side: int) -> None:
        mx.eval(*self.step.gradient(self._profile_state(side)))

    def _profile_update(self, side: int) -> None:
        state = self._profile_state(side)
        gradient = np.random.default_rng(1).standard_normal(state.shape, dtype=np.float32)
        self.step.update(state, mx.array(gradient), 1.0, 0.0)

    def plan(self, height: int, width: int, last: bool = True) -> OctavePlan:
        """How the octave of this size is dreamed (``last``: the full-size one, whose base the caller holds)."""
        key = (height, width, last)
        if key in self._plans:
            return self._plans[key]
        if self.tile_size is not None:   # an explicit --tile-size (0: never) wins over the budget
            tile = self.tile_size if self.tile_size and max(height, width) > self.tile_size else None
            plan = OctavePlan(height, width, tile, float("nan"), float("nan"))
        else:
            self.probe.release()
            resident = self.probe.resident()
            if fits_unprofiled(resident, height, width, self.budget):
                plan = OctavePlan(height, width, None, float("nan"), float("nan"))
            else:
                # Image-sized arrays the dream loop holds besides the step's own (``Dreamer.__call__``): the
                # octave's base unless it is the caller's image; tiled, also the state and its gradient.
                extra = 0 if last else 1
                profile = self.profile()
                plan = plan_octave(profile, resident, height, width, self.budget,
                                   min_tile=2 * self.step.model.MIN_INPUT_SIZE, whole_copies=extra,
                                   tiled_copies=2 + extra, tiled_extra=profile.update_bytes_per_pixel,
                                   what=self.step.model.name)
        self._plans[key] = plan
        return plan

    def tiling_notice(self, tiled: list[OctavePlan]) -> str:
        """One line for a dream's tiling: its largest tiled octave, and how many smaller ones are tiled too."""
        plan = tiled[-1]
        tile_h, tile_w = plan.tile_shape
        more = f"; {len(tiled) - 1} smaller octave(s) too" if len(tiled) > 1 else ""
        return (f"{plan.width}x{plan.height} would need about {format_bytes(plan.whole)} in one piece, over the "
                f"{format_bytes(self.budget)} memory budget: dreaming it in {plan.tile_count} tiles of "
                f"{tile_w}x{tile_h} (about {format_bytes(plan.predicted)}{more}; --max-memory or --tile-size "
                "to change)")

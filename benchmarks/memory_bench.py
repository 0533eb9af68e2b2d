"""Memory of dreams on big photos with default flags: the budget's prediction against the measured peak.

Each measurement is a child process that does what ``dream.py --input photo.jpg --model NAME``
does (read the JPEG, resolve the model's recipe, dream, write the result), with the recipe's
steps cut to ``steps`` (memory does not grow with the step count; the time does), and prints
its own peak resident set (``VmHWM``) next to the plan's prediction. The model has random
weights: memory does not depend on their values. Each model's memory profile is measured once
by a child of its own first, so the measured peak is the dream's, as on every run after a
model's first.

The speed rows time steps of one octave at the same size whole and auto-tiled (a budget that
forces tiles), per megapixel.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "assets" / "chelsea.png"


@dataclass
class MemoryResult:
    model: str
    width: int
    height: int
    predicted_bytes: float        # the plan's largest octave (nan: the image fitted without a profile)
    peak_rss_bytes: int           # the child's own high-water mark, JPEG read to result written
    tiles: int                    # of the full-size octave (1: whole)
    seconds: float
    output_size: tuple[int, int]

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    @property
    def error(self) -> float:
        return self.predicted_bytes / self.peak_rss_bytes - 1


@dataclass
class TilingSpeed:
    model: str
    width: int
    height: int
    whole_s: float                # seconds per step, whole image
    tiled_s: float                # seconds per step, auto-tiled
    tiles: int
    tile_shape: tuple[int, int]

    def per_megapixel(self, seconds: float) -> float:
        return seconds / (self.width * self.height / 1e6)

    @property
    def ratio(self) -> float:
        return self.tiled_s / self.whole_s


def photo_of_size(folder: Path, width: int, height: int) -> Path:
    """A JPEG of the given size (the cat photo, resampled): what a phone hands a user."""
    from PIL import Image

    path = folder / f"photo_{width}x{height}.jpg"
    if not path.exists():
        Image.open(PHOTO).convert("RGB").resize((width, height), Image.Resampling.BICUBIC).save(path, quality=90)
    return path


def _dream_args(name: str, photo: Path, output: Path, steps: int, max_memory: int | None,
                no_tile: bool = False) -> argparse.Namespace:
    from deepdream.cli.args import still_parser

    argv = ["--input", str(photo), "--model", name, "--steps", str(steps), "--output", str(output), "--quiet"]
    argv += ["--max-memory", f"{max_memory}B"] if max_memory else []
    argv += ["--no-tile"] if no_tile else []
    return still_parser().parse_args(argv)


def _dreamer(args: argparse.Namespace):
    import models
    from deepdream.cli.settings import settings_for_model
    from deepdream.dreamer import Dreamer

    model = models.build_model(args.model)
    model.eval()
    return Dreamer(model, settings_for_model(args, model), quiet=True)


def child(request: dict) -> dict:
    """One measurement (in a fresh process): ``request["kind"]`` is "profile", "dream" or "speed"."""
    import models  # noqa: F401  (first: puts the fast BLAS under MLX)  # isort: skip
    import numpy as np

    from deepdream import device
    from deepdream.image_io import load_image, save_image

    device.use(request.get("device", "cpu"))
    args = _dream_args(request["model"], Path(request["photo"]), Path(request["output"]), request["steps"],
                       request.get("max_memory"), request.get("no_tile", False))
    if request["kind"] == "profile":
        dreamer = _dreamer(args)
        dreamer.profile()
        return {}
    start = time.perf_counter()
    image = load_image(request["photo"])
    dreamer = _dreamer(args)
    if request["kind"] == "speed":
        height, width = image.shape[:2]
        plan = dreamer.plan(height, width)
        runner = dreamer.runner(plan)
        state = runner.encode(image)
        times = []
        for i in range(request["timed"] + 1):    # the first step traces the compiled graphs
            begin = time.perf_counter()
            state, _ = runner(state, (3 * i, -5 * i), 1.0, 0.05)   # evaluated before it returns
            times.append(time.perf_counter() - begin)
        return {"step_s": float(np.median(times[1:])), "tiles": plan.tile_count, "tile_shape": plan.tile_shape}
    result = dreamer(image)
    save_image(args.output, result)
    sizes = dreamer.octave_sizes(*image.shape[:2])
    plans = [dreamer.plan(h, w, last=i == len(sizes) - 1) for i, (h, w) in enumerate(sizes)]  # cached: no new work
    last = plans[-1]
    predicted = [p.predicted for p in plans if not np.isnan(p.predicted)]
    return {"predicted": max(predicted, default=float("nan")), "tiles": last.tile_count,
            "seconds": time.perf_counter() - start, "output": [int(result.shape[1]), int(result.shape[0])]}


def _run_child(request: dict) -> tuple[dict, int]:
    command = [sys.executable, str(ROOT / "bench.py"), "--memory-child", json.dumps(request)]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit status {proc.returncode}"
        raise RuntimeError(f"the memory child ({request['kind']} {request['model']}) failed: {tail}")
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    return answer["result"], answer["peak_rss_bytes"]


def measure_memory(name: str, sizes: list[tuple[int, int]], steps: int, folder: Path, max_memory: int | None,
                   device: str, notice) -> list[MemoryResult]:
    smallest = photo_of_size(folder, *min(sizes, key=lambda s: s[0] * s[1]))
    base = {"model": name, "steps": steps, "max_memory": max_memory, "device": device}
    _run_child({**base, "kind": "profile", "photo": str(smallest), "output": str(folder / "unused.png")})
    results = []
    for width, height in sizes:
        notice(f"memory: {name} {width}x{height} with its recipe's settings ({steps} step per octave) ...")
        photo = photo_of_size(folder, width, height)
        out, peak = _run_child({**base, "kind": "dream", "photo": str(photo), "output": str(folder / f"{name}.jpg")})
        results.append(MemoryResult(name, width, height, out["predicted"], peak, out["tiles"], out["seconds"],
                                    tuple(out["output"])))
    return results


def measure_tiling_speed(name: str, size: tuple[int, int], timed: int, folder: Path, device: str,
                         notice) -> TilingSpeed:
    """Steps of one octave whole, then auto-tiled under a budget that the whole image exceeds."""
    notice(f"tiling speed: {name} at {size[0]}x{size[1]} whole and tiled ...")
    photo = photo_of_size(folder, *size)
    base = {"model": name, "steps": 1, "photo": str(photo), "output": str(folder / "unused.png"), "device": device,
            "timed": timed, "kind": "speed"}
    whole, peak = _run_child({**base, "no_tile": True})
    # half of what the whole image took: tiles, but as large as that budget allows
    tiled, _ = _run_child({**base, "max_memory": peak // 2})
    return TilingSpeed(name, size[0], size[1], whole["step_s"], tiled["step_s"], tiled["tiles"],
                       tuple(tiled["tile_shape"]))


def child_main(request_json: str) -> int:
    from benchmarks.measure import own_peak_rss_bytes

    result = child(json.loads(request_json))
    print(json.dumps({"result": result, "peak_rss_bytes": own_peak_rss_bytes()}))
    return 0

#!/usr/bin/env python
"""Speed benchmark: our MLX dream step next to a PyTorch implementation of the same step.

For each model, one dream step (the engine's own compiled step from ``deepdream.step``:
jitter roll, forward to the model's default layers, gradient w.r.t. the input, smoothing,
normalisation, update) is timed at each size, side by side with the same step in PyTorch on
the torchvision network with identical weights. Then one end-to-end recipe (googlenet preset,
4 octaves, 1024 px) on both sides; then memory: every model's dream of 1, 4, 12 and 24 MP photos
with default flags (the memory budget's prediction next to the measured peak), and the speed of
auto-tiled steps against whole-image ones (``benchmarks/memory_bench.py``).

    python bench.py                      # the full table (several minutes on 2 cores)
    python bench.py --models googlenet vgg16 --sizes 224 --repeats 3
    python bench.py --quick              # tiny sizes, one model: checks that it all runs (CI)
    python bench.py --device gpu         # both sides on the GPU (MLX's CUDA backend vs PyTorch CUDA)

Needs torch and torchvision (the reference side); dreaming itself never imports them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the real imports wait until the BLAS is in place (``import models`` first)
    from benchmarks.measure import Limits
    from benchmarks.memory_bench import MemoryResult, TilingSpeed
    from benchmarks.pairs import ModelPair
    from benchmarks.report import EndToEndResult, StepResult

ROOT = Path(__file__).resolve().parent
DEFAULT_SIZES = (512, 1024)
#: On a GPU small images measure launch overhead, not the step: larger sizes.
GPU_SIZES = (512, 1024)
#: Photo sizes of the memory table (1, 4, 12 and 24 MP) and the size of the tiling speed rows.
MEMORY_SIZES = ((1200, 800), (2400, 1600), (4000, 3000), (6000, 4000))
TILING_SPEED_SIZE = (2000, 1500)
MEMORY_LIMIT_BYTES = 4 * 2 ** 30
E2E_RECIPE = "googlenet"


def _size_pair(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not WIDTHxHEIGHT (e.g. 4000x3000)") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"'{text}': both sides must be positive")
    return width, height


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must be at least 1")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", metavar="NAME", help="models to time (default: all seven)")
    parser.add_argument("--sizes", nargs="+", type=_positive, metavar="PX",
                        help=f"square image sides (default: {' '.join(map(str, DEFAULT_SIZES))})")
    parser.add_argument("--repeats", type=_positive, help="timed steps per side, median reported (default 7)")
    parser.add_argument("--warmup", type=int, help="untimed steps per side first (default 2; compiles the step)")
    parser.add_argument("--threads", type=_positive,
                        help="threads for both sides (torch.set_num_threads and the BLAS; default: all cores)")
    parser.add_argument("--e2e-size", type=_positive, metavar="PX",
                        help="longest side of the end-to-end recipe's image (default 1024)")
    parser.add_argument("--e2e-steps", type=_positive, metavar="N", help="steps per octave (default: the preset's)")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end recipe")
    parser.add_argument("--memory-sizes", nargs="+", type=_size_pair, metavar="WxH",
                        help="photo sizes of the memory table (default: 1, 4, 12 and 24 MP)")
    parser.add_argument("--memory-steps", type=_positive, metavar="N",
                        help="steps per octave of the memory dreams (default 1; memory does not grow with it)")
    parser.add_argument("--memory-models", nargs="+", metavar="NAME", help="models of the memory table (default: all)")
    parser.add_argument("--max-memory", metavar="SIZE", help="memory budget of those dreams (default: dream.py's)")
    parser.add_argument("--tiling-size", type=_size_pair, metavar="WxH",
                        help="image of the tiled-vs-whole speed rows (default 2000x1500)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory table")
    parser.add_argument("--no-tiling", action="store_true", help="skip the tiled-vs-whole speed rows")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, one model, one repeat: only checks that everything runs (CI)")
    parser.add_argument("--profile", metavar="NAME",
                        help="instead of the table: per-stage cost of forward + gradient of one model, ours vs torch")
    parser.add_argument("--clock", choices=("wall", "cpu", "span"), default="wall",
                        help="wall: elapsed time (default); cpu: CPU time of all threads; span: CPU time of the "
                             "busiest thread with idle threads asleep, about an idle machine's elapsed time and "
                             "steady on a busy one (benchmarks/measure.py)")
    parser.add_argument("--same-process", action="store_true",
                        help="time both sides inside this process instead of one worker process each "
                             "(torch's OpenMP then also runs MLX's BLAS: slower for ours, see benchmarks/isolated.py)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="where both sides run: cpu (default) or gpu (MLX's GPU backend against PyTorch "
                             "CUDA on the same card; default sizes then 512 1024 and a 6000x4000 memory test)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--memory-child", metavar="REQUEST", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    gpu = args.device == "gpu"
    defaults = {
        "models": ["googlenet"] if quick else None,
        "sizes": [64] if quick else list(GPU_SIZES if gpu else DEFAULT_SIZES),
        "repeats": 1 if quick else 7,
        "warmup": 1 if quick else 2,
        "e2e_size": 128 if quick else 1024,
        "e2e_steps": 2 if quick else None,
        "memory_sizes": [(400, 300), (1200, 900)] if quick else list(MEMORY_SIZES),
        "memory_steps": 1,
        "memory_models": ["googlenet"] if quick else None,
        "tiling_size": (640, 480) if quick else TILING_SPEED_SIZE,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.warmup < 0:
        parser.error("--warmup must be zero or positive")
    if args.max_memory is not None:
        from deepdream.memory import parse_bytes

        try:
            args.max_memory = parse_bytes(args.max_memory)
        except ValueError as exc:
            parser.error(str(exc))
    return args


class BenchError(Exception):
    """Bad input the user can fix; the message is one line."""


# -- the benchmark ----------------------------------------------------------------------------------

def _notice(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def worker_specs(pair: ModelPair, layers: list[str], workdir: Path, threads: int,
                 clock: str, device: str = "cpu") -> dict[str, dict[str, object]]:
    """What each side needs to rebuild its half of ``pair``, in a worker process or here (benchmarks.isolated)."""
    import torch

    net_path = workdir / f"{pair.name}_net.pt"
    if not net_path.exists():
        # the whole module (on the CPU; the worker maps it to its device): no torchvision calls, no weights
        torch.save(pair.net.cpu(), net_path)
    qualified = {id(module): name for name, module in pair.net.named_modules()}
    modules = {layer: qualified[id(module)] for layer, module in pair.torch_modules(layers).items()}
    return {
        "ours": {"model": pair.name, "weights": str(pair.weights_path), "layers": layers, "clock": clock,
                 "device": device},
        "torch": {"net": str(net_path), "modules": modules, "mean": list(pair.ours.mean),
                  "std": list(pair.ours.std), "step_scale": pair.step_scale, "threads": threads, "clock": clock,
                  "device": device},
    }


def time_steps(pair: ModelPair, sizes: list[int], warmup: int, repeats: int,
               specs: dict[str, dict[str, object]], same_process: bool, device: str = "cpu") -> list[StepResult]:
    """Our engine's step vs the torch step for one model at each size.

    Each side is timed in its own worker process (benchmarks.isolated says why), or with
    ``same_process`` both in this one. Either way the agreement of the two steps and the FLOP
    count are measured here, on this process's copies.
    """
    import numpy as np

    from benchmarks.isolated import STEP_ARGS, Side, SideWorker, alternating_times, test_image, torch_device
    from benchmarks.measure import median, step_cost
    from benchmarks.report import StepResult
    from benchmarks.torch_dream import TorchDreamStep
    from deepdream.objectives import build_objective
    from deepdream.step import make_step

    model = pair.ours
    step = make_step(model, build_objective(model, pair.layers))
    tdevice = torch_device(device)
    tstep = TorchDreamStep(pair.net.to(tdevice), pair.torch_modules(pair.layers), model.mean, model.std, tdevice,
                           step_scale=pair.step_scale)
    open_side = Side if same_process else SideWorker
    sides = [open_side(side, spec) for side, spec in specs.items()]
    results = []
    try:
        for size in sizes:
            if size < model.MIN_INPUT_SIZE:
                _notice(f"{pair.name}: skipping {size} px, below its minimum input of {model.MIN_INPUT_SIZE} px")
                continue
            rgb = test_image(size, size)
            state = step.space.encode(rgb)
            tstate = tstep.encode(rgb)
            ours_new, _ = step(state, *STEP_ARGS)
            torch_new = tstep(tstate, *STEP_ARGS)
            ours_delta = np.array(ours_new - state)[0]
            torch_delta = (torch_new - tstate)[0].permute(1, 2, 0).cpu().numpy()
            # Relative L2, not max: a max-pool window whose two largest values differ by float
            # rounding may pick a different winner on each side, which moves a few pixels' gradient.
            agreement = float(np.linalg.norm(ours_delta - torch_delta) / max(np.linalg.norm(torch_delta), 1e-30))
            cost = step_cost(tstep.loss, tstate)
            times = alternating_times(sides, size, warmup, repeats)
            result = StepResult(pair.name, pair.layers, size, median(times["ours"]), median(times["torch"]),
                                cost, agreement, repeats)
            _notice(f"{pair.name} {size} px: ours {result.ours_s * 1000:.0f} ms, torch {result.torch_s * 1000:.0f} ms "
                    f"(ours/torch {result.ratio:.2f})")
            results.append(result)
    finally:
        tstep.close()
        for side in sides:
            side.close()
    return results


def time_end_to_end(size: int, steps: int | None, specs: Callable[[list[str]], dict[str, dict[str, object]]],
                    same_process: bool) -> EndToEndResult:
    """The googlenet preset (4 octaves) on the sample photo, long side ``size``: ours vs torch.

    ``specs(layers)``: each side's spec, run in its own worker process or, with ``same_process``,
    in this one, one side after the other."""
    from benchmarks.isolated import Side, SideWorker
    from benchmarks.report import EndToEndResult
    from deepdream.presets import PRESETS
    from deepdream.settings import DreamSettings

    preset = PRESETS[E2E_RECIPE]
    values = dict(preset.values())
    if steps is not None:
        values["steps"] = steps
    settings = DreamSettings(**values, seed=0)
    height = round(size * 300 / 451)        # chelsea.png's aspect ratio, long side ``size``
    layers = list(settings.layers)
    # A whole dream is timed by elapsed time whatever --clock says; its workers wait for work as
    # a user's process does (under the span clock's sleeping threads it read 30 s for 18).
    spec = {side: {**side_spec, "clock": "wall"} for side, side_spec in specs(layers).items()}
    open_side = Side if same_process else SideWorker
    # Ours dreams first and reports the octaves it used (the engine drops any too small for the
    # model); the torch side dreams the same ones.
    # On a GPU the first dream at each octave size compiles its kernels (MLX's NVRTC, cached on
    # disk for later runs; cuDNN's plans): a warm-up dream first, so that both sides time dreaming.
    warmups = 1 if spec["ours"].get("device") == "gpu" else 0
    with open_side("ours", spec["ours"]) as ours:
        for _ in range(warmups + 1):
            answer = ours.ask("dream", height=height, width=size, settings=values)
    with open_side("torch", spec["torch"]) as torch_side:
        for _ in range(warmups + 1):
            torch_s = torch_side.ask("dream", height=height, width=size, settings=values,
                                     sizes=answer["sizes"])["seconds"]
    ours_s, sizes = answer["seconds"], answer["sizes"]
    return EndToEndResult(f"{E2E_RECIPE} preset ({', '.join(layers)})", size, height, len(sizes),
                          settings.steps, ours_s, torch_s)


def run_profile(args: argparse.Namespace, threads: int, machine: dict[str, str], limits: Limits,
                load_before: tuple[float, float, float]) -> int:
    from benchmarks.measure import TIMERS
    from benchmarks.pairs import ModelUnavailable, build_pair
    from benchmarks.profile import profile_stages, profile_table
    from benchmarks.report import header_lines

    with tempfile.TemporaryDirectory(prefix="deepdream-bench-") as tmp:
        try:
            pair = build_pair(args.profile, Path(tmp))
        except ModelUnavailable as exc:
            raise BenchError(str(exc)) from None
        tables = []
        for size in args.sizes:
            costs = profile_stages(pair, size, warmup=args.warmup, repeats=args.repeats, timer=TIMERS[args.clock])
            tables.append(f"### {args.profile}, {size} px: forward + input gradient up to each stage\n\n"
                          + profile_table(costs, limits))
    print(f"## Per-stage profile of {args.profile}\n")
    print(header_lines(machine, threads, limits, load_before, os.getloadavg()))
    for table in tables:
        print()
        print(table)
    return 0


def _check_environment(args: argparse.Namespace) -> None:
    """Bad model names, a missing torch side or engine, a GPU run without a GPU: one-line errors."""
    from models import MODELS

    unknown = [m for m in (args.models or []) + (args.memory_models or []) + ([args.profile] if args.profile else [])
               if m not in MODELS]
    if unknown:
        raise BenchError(f"unknown model '{unknown[0]}'; available: {', '.join(MODELS)}")
    try:
        import torch
        import torchvision  # noqa: F401
    except ImportError as exc:
        raise BenchError(f"the benchmark needs torch and torchvision for the reference side ({exc}); "
                         "pip install -r requirements-dev.txt") from None
    try:
        import deepdream.dreamer  # noqa: F401
    except ImportError as exc:
        raise BenchError(f"the dream engine is not importable ({exc})") from None
    if args.device == "gpu":
        from deepdream import device
        from deepdream.errors import DreamError

        if not torch.cuda.is_available():
            raise BenchError("--device gpu needs PyTorch with CUDA for the reference side, and torch sees no GPU")
        try:
            device.use("gpu")
        except DreamError as exc:
            raise BenchError(str(exc)) from None


@dataclass
class BenchRun:
    """What every table of one run shares: its arguments, threads, working folder and model pairs."""

    args: argparse.Namespace
    threads: int
    workdir: Path
    pairs: dict[str, ModelPair | None] = field(default_factory=dict)

    def pair(self, name: str) -> ModelPair | None:
        """Both sides of ``name`` (built once), or None with a notice where it cannot be built."""
        from benchmarks.pairs import ModelUnavailable, build_pair

        if name not in self.pairs:
            try:
                self.pairs[name] = build_pair(name, self.workdir)
                _notice(f"{name}: weights: {self.pairs[name].source}")
            except ModelUnavailable as exc:
                self.pairs[name] = None
                _notice(f"skipping {exc}")
        return self.pairs[name]

    def specs(self, pair: ModelPair, layers: list[str]) -> dict[str, dict[str, object]]:
        return worker_specs(pair, layers, self.workdir, self.threads, self.args.clock, self.args.device)

    @property
    def memory_models(self) -> list[str]:
        from benchmarks.pairs import BENCH_MODELS

        return self.args.memory_models or list(BENCH_MODELS)


def step_rows(bench: BenchRun) -> list[StepResult]:
    """The dream-step table: every model at every size, ours against torch."""
    from benchmarks.pairs import BENCH_MODELS

    results: list[StepResult] = []
    for name in bench.args.models or list(BENCH_MODELS):
        pair = bench.pair(name)
        if pair is None:
            continue
        results += time_steps(pair, bench.args.sizes, bench.args.warmup, bench.args.repeats,
                              bench.specs(pair, pair.layers), bench.args.same_process, bench.args.device)
        if name != E2E_RECIPE:
            del bench.pairs[name]             # free its memory before the next model
    return results


def end_to_end_rows(bench: BenchRun) -> list[EndToEndResult]:
    """The end-to-end recipe on both sides (none with --no-e2e)."""
    if bench.args.no_e2e or (pair := bench.pair(E2E_RECIPE)) is None:
        return []
    _notice(f"end-to-end: {E2E_RECIPE} preset at {bench.args.e2e_size} px on both sides ...")
    return [time_end_to_end(bench.args.e2e_size, bench.args.e2e_steps, lambda layers: bench.specs(pair, layers),
                            bench.args.same_process)]


def memory_rows(bench: BenchRun) -> list[MemoryResult]:
    """Peak memory of photo dreams against the budget's prediction (none with --no-memory)."""
    if bench.args.no_memory:
        return []
    from benchmarks.memory_bench import measure_memory

    return [result for name in bench.memory_models
            for result in measure_memory(name, bench.args.memory_sizes, bench.args.memory_steps, bench.workdir,
                                         bench.args.max_memory, bench.args.device, _notice)]


def tiling_rows(bench: BenchRun) -> list[TilingSpeed]:
    """Auto-tiled steps against whole-image steps (none with --no-tiling)."""
    if bench.args.no_tiling:
        return []
    from benchmarks.memory_bench import measure_tiling_speed

    return [measure_tiling_speed(name, bench.args.tiling_size, bench.args.repeats, bench.workdir, bench.args.device,
                                 _notice) for name in bench.memory_models]


def print_steps(results: list[StepResult], limits: Limits) -> None:
    from benchmarks.report import FOOTNOTES, step_table

    print("### One dream step (model's default layers)\n")
    print(step_table(results, limits))
    print()
    print(FOOTNOTES)
    print()


def print_end_to_end(results: list[EndToEndResult]) -> None:
    from benchmarks.report import end_to_end_table

    print("### End to end\n")
    print(end_to_end_table(results))
    print()


def print_memory(results: list[MemoryResult], steps: int) -> None:
    from benchmarks.report import memory_table, prediction_table

    print(f"### Peak memory (GiB) of photo dreams with default flags, {steps} step per octave\n")
    print(memory_table(results, MEMORY_LIMIT_BYTES))
    print()
    print("Each cell: the measured peak RSS of a child doing what dream.py does (JPEG in, result out); in "
          "brackets the memory budget's prediction and how the full-size octave was split. "
          f"**OVER** marks a peak above {MEMORY_LIMIT_BYTES / 2 ** 30:.0f} GiB.\n")
    print("### The prediction against the measured peak\n")
    print(prediction_table(results))
    print()


def print_tiling(results: list[TilingSpeed], repeats: int) -> None:
    from benchmarks.report import tiling_speed_table

    print(f"### Auto-tiled steps against whole-image steps (median of {repeats})\n")
    print(tiling_speed_table(results))
    print()


def run(args: argparse.Namespace) -> int:
    import models  # noqa: F401  (first: puts the fast BLAS under MLX)

    _check_environment(args)
    import torch

    from benchmarks.measure import machine_description, machine_limits
    from benchmarks.report import header_lines

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    machine = machine_description()
    limits = machine_limits(threads, args.device, args.clock)
    if args.profile:
        return run_profile(args, threads, machine, limits, load_before)

    with tempfile.TemporaryDirectory(prefix="deepdream-bench-") as tmp:
        bench = BenchRun(args, threads, Path(tmp))
        steps = step_rows(bench)
        e2e = end_to_end_rows(bench)
        memory = memory_rows(bench)
        tiling = tiling_rows(bench)
    load_after = os.getloadavg()

    print("## DeepDream-MLX speed: ours (MLX) vs PyTorch, same weights, same step\n")
    print(header_lines(machine, threads, limits, load_before, load_after, args.same_process))
    if args.clock != "wall":
        print(f"- times (steps and the machine's rates alike) are {CLOCK_NOTES[args.clock]} (--clock {args.clock}), "
              "not elapsed time")
    print()
    if steps:
        print_steps(steps, limits)
    if e2e:
        print_end_to_end(e2e)
    if memory:
        print_memory(memory, args.memory_steps)
    if tiling:
        print_tiling(tiling, args.repeats)
    if args.json:
        from dataclasses import asdict

        from models.weights import atomic_write

        payload = {"machine": machine, "threads": threads, "limits": asdict(limits),
                   "load_before": load_before, "load_after": load_after,
                   "steps": [asdict(r) for r in steps], "end_to_end": [asdict(r) for r in e2e],
                   "memory": [asdict(r) for r in memory], "tiling": [asdict(r) for r in tiling]}
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2)))
    return 0


#: What a step's time is under each --clock but wall, for the table's header.
CLOCK_NOTES = {"cpu": "CPU seconds of all threads",
               "span": "CPU seconds of each process's busiest thread, idle threads asleep"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.clock == "span":
        from benchmarks.measure import SPAN_ENV

        os.environ.update(SPAN_ENV)     # read by the OpenMP runtimes as they start: before any import
    if args.threads:
        # The BLAS reads these when it loads, i.e. on `import models`: set them first.
        for var in ("MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    try:
        if args.memory_child:
            from benchmarks.memory_bench import child_main

            return child_main(args.memory_child)
        return run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Each side of a timing in a process of its own, so that ours never shares a process with torch.

Why not time both in the benchmark's process: torch brings its own OpenMP runtime (GNU
``libgomp``), and once it is loaded MKL runs MLX's products on it (``libmkl_gnu_thread``)
instead of Intel's ``libiomp5``; the two libraries' thread pools also spin on the same two
cores. ``dream.py`` never imports torch, so that is not what a user gets: our step measures
markedly slower next to torch than in a process of its own (docs/performance.md). The sides run in two worker processes that take turns (A, B, A, B: a change in
machine load hits both alike), with a short pause before each timed turn so the other
side's idle threads have stopped spinning. Both workers run with the same allocator setting
(``fastlayers._blas.keep_freed_memory``), as both did in one process.

Protocol: the parent starts ``python -m benchmarks.isolated SIDE SPEC_JSON`` and writes one
JSON command per line; the worker answers each with one JSON line (``{"error": ...}`` on
failure). The ``ours`` worker never imports torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .measure import TIMERS, without_span_env

ROOT = Path(__file__).resolve().parent.parent

#: Seconds to wait before each timed turn: the other worker's BLAS/OpenMP threads spin for a
#: while after its last call (Intel OpenMP's KMP_BLOCKTIME is 200 ms) before they sleep.
SETTLE_S = 0.25


def test_image(height: int, width: int) -> np.ndarray:
    """The sample photo resized to (height, width), float32 RGB in [0, 1] (noise if it is missing)."""
    from PIL import Image

    path = ROOT / "assets" / "chelsea.png"
    if not path.exists():
        return np.random.default_rng(0).random((height, width, 3), dtype=np.float32)
    with Image.open(path) as image:
        image = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        return np.asarray(image, np.float32) / 255.0


# -- the worker (child) side ---------------------------------------------------------------------------

#: The step's fixed arguments on both sides: jitter shift, smoothing sigma, step size. The sigma
#: is ``deepdream.transforms.smoothing_sigma(0, 10, 0.5)`` (first step of a 10-step octave), the
#: value the benchmark has always timed; written out because this module is imported before
#: ``models`` has put the fast BLAS under MLX, so it may not import ``deepdream`` at the top.
STEP_ARGS = ((7, -5), 0.7, 0.09)


class _OursSide:
    """Our engine: the compiled step and the octave loop, on the exported weights. Imports no torch."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import models  # first: puts the fast BLAS under MLX  # isort: skip
        from deepdream import device
        from deepdream.objectives import build_objective
        from deepdream.step import make_step

        device.use(spec.get("device", "cpu"))
        self.model = models.load_model(spec["model"], weights=spec["weights"])
        self.step = make_step(self.model, build_objective(self.model, spec["layers"]))

    def prepare(self, size: int) -> Callable[[], object]:
        state = self.step.space.encode(test_image(size, size))
        return lambda: self.step(state, *STEP_ARGS)

    def dream(self, height: int, width: int, settings: dict[str, Any], sizes: list | None) -> dict[str, Any]:
        from deepdream.dreamer import Dreamer
        from deepdream.settings import DreamSettings

        rgb = test_image(height, width)
        start = time.perf_counter()
        dreamer = Dreamer(self.model, DreamSettings(**settings, seed=0), quiet=True)
        dreamer(rgb, rng=np.random.default_rng(0))
        return {"seconds": time.perf_counter() - start, "sizes": dreamer.octave_sizes(height, width)}


class _TorchSide:
    """The PyTorch reference: the same step and octave loop on the pickled torch network."""

    def __init__(self, spec: dict[str, Any]) -> None:
        # The allocator setting ours runs with (keep_freed_memory; importing models applies it):
        # without it torch's step page-faults its activations afresh every time (measurably
        # slower), and the table would compare glibc settings, not steps.
        import models  # noqa: F401  # isort: skip
        import torch

        from .torch_dream import TorchDreamStep

        torch.set_num_threads(spec["threads"])
        device = torch_device(spec.get("device", "cpu"))
        net = torch.load(spec["net"], weights_only=False, map_location=device).eval()
        modules = dict(net.named_modules())
        self.step = TorchDreamStep(net, {layer: modules[name] for layer, name in spec["modules"].items()},
                                   spec["mean"], spec["std"], device=device, step_scale=spec.get("step_scale", 1.0))

    def prepare(self, size: int) -> Callable[[], object]:
        state = self.step.encode(test_image(size, size))

        def run() -> None:
            self.step(state, *STEP_ARGS)
            self.step.synchronize()
        return run

    def dream(self, height: int, width: int, settings: dict[str, Any], sizes: list | None) -> dict[str, Any]:
        from .torch_dream import torch_dream

        assert sizes is not None, "the torch side dreams the octave sizes our engine chose"
        rgb = test_image(height, width)
        start = time.perf_counter()
        torch_dream(self.step, rgb, sizes=[tuple(s) for s in sizes], steps=settings["steps"], lr=settings["lr"],
                    jitter=settings["jitter"], smoothing=settings["smoothing"], rng=np.random.default_rng(0))
        self.step.synchronize()
        return {"seconds": time.perf_counter() - start, "sizes": sizes}


def torch_device(device: str) -> str:
    """torch's name for the benchmark's ``--device``: the GPU is CUDA's on the torch side."""
    return "cuda" if device == "gpu" else "cpu"


#: The two sides, by the name the commands and the results use.
SIDES: dict[str, type[_OursSide | _TorchSide]] = {"ours": _OursSide, "torch": _TorchSide}


class Side:
    """One side's commands, run in this process: the worker's loop below, and ``bench.py
    --same-process``. ``ask`` takes the same commands as ``SideWorker.ask``."""

    #: No pause before a timed turn in one process (that is the old method, kept as it was).
    settle_s = 0.0

    def __init__(self, side: str, spec: dict[str, Any]) -> None:
        self.side = side
        self._impl = SIDES[side](spec)
        self._timer = TIMERS[spec["clock"]]
        self._run: Callable[[], object] | None = None

    def ask(self, op: str, **fields: Any) -> dict[str, Any]:
        if op == "prepare":
            self._run = self._impl.prepare(fields["size"])
            for _ in range(fields["warmup"]):
                self._run()
            return {}
        if op == "step":
            assert self._run is not None, "'prepare' comes before 'step'"
            return {"seconds": self._timer(self._run)}
        if op == "dream":
            return self._impl.dream(fields["height"], fields["width"], fields["settings"], fields.get("sizes"))
        raise ValueError(f"unknown command {op!r}")

    def close(self) -> None:
        pass

    def __enter__(self) -> Side:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(side: str, spec: dict[str, Any]) -> None:
    """The worker's loop: one JSON command per stdin line, one JSON answer per stdout line."""
    try:
        local: Side | None = Side(side, spec)
        failed = None
        if side == "ours" and "torch" in sys.modules:  # the point of this process; dream.py never imports it either
            raise RuntimeError("the ours worker imported torch")
    except Exception as exc:  # every command is answered with it, so the parent reports it in one line
        local, failed = None, f"{type(exc).__name__}: {exc}"
    for line in sys.stdin:
        command = json.loads(line)
        try:
            answer = local.ask(**command) if local else {"error": failed}
        except Exception as exc:  # reported to the parent, which raises it there
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


# -- the parent side -------------------------------------------------------------------------------------

class WorkerError(RuntimeError):
    """A worker failed; the message is its last words."""


def worker_environment(spec: dict[str, Any]) -> dict[str, str]:
    """A worker's environment: this process's, less ``SPAN_ENV`` unless the worker is timed by the
    span clock (``bench.py --clock span`` sets it for every process it starts)."""
    environ = dict(os.environ) if spec.get("clock") == "span" else without_span_env(os.environ)
    return {**environ, "PYTHONPATH": str(ROOT)}


class SideWorker:
    """One side (``ours`` or ``torch``) in a child process; ``ask`` sends a command and returns the answer."""

    settle_s = SETTLE_S

    def __init__(self, side: str, spec: dict[str, Any]) -> None:
        self.side = side
        self._proc = subprocess.Popen([sys.executable, "-m", "benchmarks.isolated", side, json.dumps(spec)],
                                      cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      env=worker_environment(spec))

    def ask(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass                                        # it died; readline says so below
        line = self._proc.stdout.readline()
        if not line:
            raise WorkerError(f"the {self.side} worker exited (status {self._proc.wait()}); its stderr is above")
        answer = json.loads(line)
        if "error" in answer:
            raise WorkerError(f"the {self.side} worker failed: {answer['error']}")
        return answer

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()                    # end of commands: the worker's loop ends
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> SideWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def alternating_times(workers: list[Side] | list[SideWorker], size: int, warmup: int,
                      repeats: int) -> dict[str, list[float]]:
    """Seconds per step of each side at ``size``, taking turns, ``repeats`` each after ``warmup``."""
    for worker in workers:
        worker.ask("prepare", size=size, warmup=warmup)
    times: dict[str, list[float]] = {worker.side: [] for worker in workers}
    for _ in range(repeats):
        for worker in workers:
            time.sleep(worker.settle_s)
            times[worker.side].append(worker.ask("step")["seconds"])
    return times


if __name__ == "__main__":
    try:
        serve(sys.argv[1], json.loads(sys.argv[2]))
    except KeyboardInterrupt:       # Ctrl-C reaches the whole process group; the parent reports it
        sys.exit(130)

"""Timers, the machine's limits (sgemm rate, memory bandwidth), what a step must compute and
move, and a process's own peak memory.

Imports neither MLX nor torch at the top: the memory benchmark's children read their peak
here (``own_peak_rss_bytes``) and must not carry torch's pages, and MLX may be imported only
after ``models`` has put the fast BLAS in place.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


Timer = Callable[[Callable[[], object]], float]


def _wall(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _cpu(run: Callable[[], object]) -> float:
    start = time.process_time()
    run()
    return time.process_time() - start


def _thread_runtimes() -> dict[str, int]:
    """Nanoseconds each thread of this process has run so far (Linux's schedstat)."""
    times = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                times[tid] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue                  # a thread that ended meanwhile
    return times


def _span(run: Callable[[], object]) -> float:
    if not os.path.isdir("/proc/self/task"):
        return _cpu(run)
    before = _thread_runtimes()
    run()
    after = _thread_runtimes()
    return max(t - before.get(tid, 0) for tid, t in after.items()) / 1e9


#: How a measurement reads time. wall: elapsed time (what a user waits). cpu: the CPU time of all
#: the process's threads (counts work, and threads spinning while they wait). span: the CPU time of
#: the busiest thread, run with every waiting thread asleep (``SPAN_ENV``): on an idle machine about
#: the elapsed time, and on a busy one far steadier than it, since other processes' turns on the
#: cores do not count (Linux; elsewhere it reads as cpu).
TIMERS: dict[str, Timer] = {"wall": _wall, "cpu": _cpu, "span": _span}

#: What the span timer needs in every timed process, before its OpenMP runtimes start: idle
#: threads sleep at once instead of spinning (Intel's runtime under MKL, GNU's under torch).
SPAN_ENV = {"KMP_BLOCKTIME": "0", "OMP_WAIT_POLICY": "PASSIVE"}


def without_span_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` less the settings ``SPAN_ENV`` put there: for a process timed by elapsed time,
    where threads woken from sleep for every short parallel region would cost time a user's
    process (whose threads spin a while before they sleep) does not pay."""
    return {key: value for key, value in environ.items() if SPAN_ENV.get(key) != value}


def interleaved_times(runs: Mapping[str, Callable[[], object]], warmup: int, repeats: int,
                      timer: Timer = _wall) -> dict[str, list[float]]:
    """Seconds of each callable by ``timer``, ``repeats`` times after ``warmup`` untimed calls.

    The callables take turns (A, B, A, B, ...), so a change in machine load during the
    measurement hits both sides alike instead of whichever ran second.
    """
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(timer(run))
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def sgemm_gflops(n: int = 2048, repeats: int = 5, clock: str = "wall") -> float:
    """MLX's float32 matmul rate on an n x n x n product (through the fast BLAS), GFLOP/s, by ``TIMERS[clock]``."""
    import mlx.core as mx

    a = mx.random.normal((n, n))
    b = mx.random.normal((n, n))
    mx.eval(a, b)
    times = interleaved_times({"sgemm": lambda: mx.eval(a @ b)}, warmup=1, repeats=repeats,
                              timer=TIMERS[clock])["sgemm"]
    return 2.0 * n ** 3 / median(times) / 1e9


@dataclass(frozen=True)
class Limits:
    """The machine's two rates a step is measured against, taken in the same run as the step."""

    sgemm_gflops: float         # MLX's 2048^3 float32 matrix product, in a process without torch
    stream_gbps: float          # memory bandwidth: STREAM's triad on all the threads timed


def machine_limits(threads: int, device: str = "cpu", clock: str = "wall") -> Limits:
    """Both rates, each read by ``TIMERS[clock]``, as the steps they are compared with are."""
    return Limits(sgemm_gflops_alone(device, clock), stream_gbps(threads, device, clock=clock))


def sgemm_gflops_alone(device: str = "cpu", clock: str = "wall") -> float:
    """``sgemm_gflops`` in a process of its own that never imports torch, as ``dream.py`` runs MLX
    (torch's OpenMP runtime in the process changes which threads MKL runs on)."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import models; from deepdream import device; "
            "device.use(sys.argv[2]); from benchmarks.measure import sgemm_gflops; "
            "print(json.dumps(sgemm_gflops(clock=sys.argv[3])))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code, root, device, clock], capture_output=True, text=True,
                          check=True)
    return float(json.loads(proc.stdout.strip().splitlines()[-1]))


@dataclass(frozen=True)
class StepCost:
    """What one forward-to-the-layers + input-gradient pass must compute and move, counted on torch's graph.

    ``flops``: the direct convolutions' and linear layers' FLOPs (2 per multiply-add), forward
    and input gradient, as torch's ``FlopCounterMode`` counts them (no weight gradients: the
    dream differentiates only the image). ``bytes``: what those same operations read and write
    at least once (input, weights and output of each forward; output gradient, weights and
    input gradient of each backward), i.e. the traffic of a step whose element-wise work is
    fused into its convolutions. ``operations``: the same two counts for each of those operations
    in turn, for the roofline.
    """

    flops: float
    bytes: float
    operations: tuple[tuple[float, float], ...] = ()

    def flop_limit_s(self, sgemm_gflops: float) -> float:
        """The step's time at the machine's matrix-product rate: its compute limit."""
        return self.flops / (sgemm_gflops * 1e9)

    def byte_limit_s(self, stream_gbps: float) -> float:
        """The step's time at the machine's memory bandwidth: its memory limit."""
        return self.bytes / (stream_gbps * 1e9)

    def roofline_s(self, sgemm_gflops: float, stream_gbps: float) -> float:
        """The step's time with each operation at whichever of the two rates binds it: its FLOPs at
        the matrix-product rate or its bytes at the memory bandwidth, the longer, summed.

        A step runs its operations one after another, so this is its limit when each may be bound by
        either rate; it is at least each whole-step limit, and well above both for a model that mixes
        thin, compute-bound products with memory-bound depthwise layers (efficientnet_lite0)."""
        return sum(max(flops / (sgemm_gflops * 1e9), nbytes / (stream_gbps * 1e9))
                   for flops, nbytes in self.operations)


def step_cost(loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> StepCost:
    """Count the forward ``loss(x)`` and its gradient w.r.t. ``x`` as ``StepCost`` says."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    # operation -> which of its tensor arguments it reads (None: all of them)
    reads: dict[object, tuple[int, ...] | None] = {
        aten.convolution.default: None,
        aten.convolution_backward.default: (0, 2),     # grad_output and weight; not the forward's input
        aten.mm.default: None, aten.addmm.default: None, aten.bmm.default: None,
    }

    def nbytes(values: object) -> int:
        return sum(t.numel() * t.element_size() for t in tree_flatten(values)[0] if isinstance(t, torch.Tensor))

    operations: list[tuple[float, float]] = []

    class OperationCounter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            # This mode is entered inside FlopCounterMode, so the call below reaches the latter:
            # the change in its total is this operation's FLOPs.
            before = flops.get_total_flops()
            out = func(*args, **(kwargs or {}))
            counted, moved = float(flops.get_total_flops() - before), 0.0
            if func in reads:
                which = reads[func]
                moved = float(nbytes([args if which is None else [args[i] for i in which], out]))
            if counted or moved:
                operations.append((counted, moved))
            return out

    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), FlopCounterMode(display=False) as flops, OperationCounter():
        # backward(inputs=...), not autograd.grad: FlopCounterMode's module hooks refuse the latter;
        # either way only the input's gradient is computed.
        loss(x).backward(inputs=[x])
    return StepCost(float(flops.get_total_flops()), sum(b for _, b in operations), tuple(operations))


def stream_gbps(threads: int, device: str = "cpu", megabytes: int = 256, repeats: int = 5,
                clock: str = "wall") -> float:
    """The machine's memory bandwidth (STREAM's triad a = b + s * c over arrays far larger than
    its caches, counting the three arrays once), GB/s, with torch's element-wise kernels on
    ``threads`` threads (or on the GPU)."""
    import torch

    from fastlayers._blas import threading_kept

    where = "cuda" if device == "gpu" else "cpu"
    n = megabytes * 2 ** 20 // 4
    b, c = torch.rand(n, device=where), torch.rand(n, device=where)
    a = torch.empty(n, device=where)
    previous = torch.get_num_threads()

    def triad() -> None:
        torch.add(b, c, alpha=3.0, out=a)
        if where == "cuda":
            torch.cuda.synchronize()

    with threading_kept():
        torch.set_num_threads(threads)
        try:
            times = interleaved_times({"triad": triad}, warmup=1, repeats=repeats, timer=TIMERS[clock])
        finally:
            torch.set_num_threads(previous)
    return 3 * n * 4 / median(times["triad"]) / 1e9


def machine_description() -> dict[str, str]:
    """CPU model, core count, OS and library versions for the table's header."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import mlx.core as mx
    import torch

    import models

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "mlx": mx.__version__,
        "blas": models.ensure_fast_blas(),
        "torch": torch.__version__,
        "gpu": (f"{torch.cuda.get_device_name()} (MLX: {mx.device_info().get('device_name', '?')})"
                if torch.cuda.is_available() and mx.default_device().type == mx.DeviceType.gpu else ""),
    }


def own_peak_rss_bytes() -> int:
    """This process's peak resident set size, in bytes.

    On Linux it is the kernel's high-water mark of this process's own memory map (``VmHWM``).
    Not ``getrusage``/``wait4``'s ``ru_maxrss``: Linux carries the *parent's* RSS into a child
    across fork + exec (it records the pre-exec memory map's high-water mark), so a child
    started by a 1 GB benchmark process reported >= 1 GB before doing anything (measured: a
    10 MB child of a 2 GB parent read 1.98 GB through ``wait4``).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    # ru_maxrss is in kilobytes on Linux, in bytes on macOS.
    scale = 1 if platform.system() == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

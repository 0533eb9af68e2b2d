"""Timers, the machine's sgemm rate, FLOP counts and a process's own peak memory.

Imports neither MLX nor torch at the top: the memory benchmark's children read their peak
here (``own_peak_rss_bytes``) and must not carry torch's pages, and MLX may be imported only
after ``models`` has put the fast BLAS in place.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def interleaved_times(runs: Mapping[str, Callable[[], object]], warmup: int, repeats: int,
                      clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds of each callable by ``clock``, ``repeats`` times after ``warmup`` untimed calls.

    The callables take turns (A, B, A, B, ...), so a change in machine load during the
    measurement hits both sides alike instead of whichever ran second.
    """
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = clock()
            run()
            times[name].append(clock() - start)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """MLX's float32 matmul rate on an n x n x n product (through the fast BLAS), GFLOP/s."""
    import mlx.core as mx

    a = mx.random.normal((n, n))
    b = mx.random.normal((n, n))
    mx.eval(a, b)
    times = interleaved_times({"sgemm": lambda: mx.eval(a @ b)}, warmup=1, repeats=repeats)["sgemm"]
    return 2.0 * n ** 3 / median(times) / 1e9


def forward_flops(run_forward: Callable[[], object], net: nn.Module) -> float:
    """FLOPs of the convolutions and linear layers that one forward pass executes (2 per multiply-add).

    Counted from the shapes each Conv2d/Linear sees (forward hooks), so a pass that stops at
    a layer counts only what ran.
    """
    import torch
    from torch import nn

    total = 0.0

    def conv_hook(module: nn.Conv2d, inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += 2.0 * output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        total += 2.0 * output.numel() * module.in_features

    handles = []
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            run_forward()
    finally:
        for handle in handles:
            handle.remove()
    return total


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

"""Which processor MLX dreams on, and what ``--info`` says about it.

MLX runs on the GPU by default wherever it has one: Metal on macOS, CUDA on Linux with an MLX
CUDA wheel installed (``requirements-cuda.txt``). The CPU-only machinery (the BLAS loaded under
MLX, the native C++ kernels, the CPU-shaped convolution paths) applies only to arrays on the
CPU; on the GPU every operation is MLX's own.
"""

from __future__ import annotations

import mlx.core as mx

from .errors import DreamError

DEVICES = ("cpu", "gpu")


def gpu_available() -> bool:
    return mx.is_available(mx.gpu)


def backend() -> str:
    """The GPU backend MLX was built with: "cuda", "metal" or "none"."""
    if mx.cuda.is_available():
        return "cuda"
    if mx.metal.is_available():
        return "metal"
    return "none"


def use(name: str) -> None:
    """Make ``name`` ("cpu" or "gpu") the default device of every MLX operation from now on."""
    if name not in DEVICES:
        raise DreamError(f"unknown device '{name}'; use one of {', '.join(DEVICES)}")
    if name == "gpu" and not gpu_available():
        raise DreamError("no GPU is available to MLX here; on Linux with an NVIDIA card install MLX's CUDA "
                         "backend (`pip install -r requirements-cuda.txt`), or run on the CPU")
    mx.set_default_device(mx.gpu if name == "gpu" else mx.cpu)


def on_gpu() -> bool:
    return mx.default_device().type == mx.DeviceType.gpu


def description() -> str:
    """One line: the default device, and on a GPU its name and backend."""
    device = mx.default_device()
    if device.type != mx.DeviceType.gpu:
        return f"device: cpu ({mx.device_info().get('device_name', 'unknown processor')})"
    info = mx.device_info()
    name = info.get("device_name") or info.get("name") or "unknown GPU"
    memory = info.get("total_memory") or info.get("memory_size")
    size = f", {memory / 2 ** 30:.0f} GiB" if memory else ""
    return f"device: gpu ({name}{size}, MLX {backend()} backend)"

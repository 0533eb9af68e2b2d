"""Native CPU kernels (an MLX C++ extension), built on this machine the first time they are needed.

Operations MLX's CPU backend cannot make fast with its own operations become MLX primitives
here, with their gradients, usable under ``mx.compile`` and ``mx.grad``: ``conv.cpp`` (the
stride-1 convolution as cache-sized blocks of BLAS products over shifted views, no im2col
copy; ``winograd.cpp`` runs its 3x3 layers with 4x fewer multiplications), ``depthwise.cpp`` (the depthwise convolution; ``fastlayers/depthwise.py`` explains why) and
``pooling.cpp`` (max and average pooling, whose gradients MLX can only express as gathers of
strided views; ``fastlayers/pooling.py``). ``bindings.cpp`` is the Python module, ``common.h`` the shared
loop splitter and primitive, ``conv.h`` what the convolution's two algorithms share.

It is compiled like MLX compiles its own fused CPU kernels: on first use, with the machine's
C++ compiler, against the installed ``mlx`` (whose headers and CMake package ship in its wheel)
and ``nanobind`` (requirements.txt), and cached under ``~/.cache/deepdream-mlx/native/`` keyed
by the sources and those versions, so upgrading MLX rebuilds it. The build runs once.
Without CMake or a compiler, or with ``DEEPDREAM_NO_NATIVE=1``, everything still works
through the pure-MLX path; ``python dream.py --info`` says which one runs and why.
``models.load_model`` triggers the build on the CPU, so a first dream builds before its progress bar.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import mlx.core as mx
import numpy as np

from .. import threads

DISABLE_VAR = "DEEPDREAM_NO_NATIVE"
SOURCE_DIR = Path(__file__).resolve().parent
SOURCES = ("CMakeLists.txt", "common.h", "conv.h", "bindings.cpp", "conv.cpp", "winograd.cpp", "im2col.cpp", "depthwise.cpp",
           "pooling.cpp", "concat.cpp", "blur.cpp", "roll.cpp", "update.cpp")

_module: ModuleType | None = None
#: "not loaded yet", "built and loaded from PATH", or why the pure-MLX path runs instead.
status: str = "not loaded yet"
_tried = False


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deepdream-mlx" / "native"


def _build_key() -> str:
    import nanobind  # noqa: F401  (its version is part of the key; missing -> ImportError, handled)

    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((SOURCE_DIR / name).read_bytes())
    from importlib.metadata import version

    for part in (mx.__version__, version("nanobind"), sys.version, platform.machine()):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def _built_library(directory: Path) -> Path | None:
    found = sorted(directory.glob("_native*.so")) + sorted(directory.glob("_native*.pyd"))
    return found[0] if found else None


def _build(target: Path) -> Path:
    """Configure and compile into a temporary folder, then move the library into ``target``."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise RuntimeError("cmake is not installed")
    target.parent.mkdir(parents=True, exist_ok=True)
    # A line of its own before any progress bar (models.load_model builds here), since it takes a while.
    print(f"deepdream: building the native CPU kernels for this machine, once (a minute or so; cached in "
          f"{target.parent})...", file=sys.stderr, flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="build-", dir=target.parent) as tmp:
        log_path = target.parent / f"{target.name}.log"
        with open(log_path, "w") as log:
            for command in ([cmake, "-S", str(SOURCE_DIR), "-B", tmp, f"-DPython_EXECUTABLE={sys.executable}",
                             "-DCMAKE_BUILD_TYPE=Release"],
                            [cmake, "--build", tmp, "--parallel", str(os.cpu_count() or 1)]):
                if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                    raise RuntimeError(f"the build failed (log: {log_path})")
        library = _built_library(Path(tmp))
        if library is None:
            raise RuntimeError(f"the build made no library (log: {log_path})")
        staging = Path(tmp) / "out"
        staging.mkdir()
        shutil.copy2(library, staging / library.name)
        try:
            staging.rename(target)           # atomic: a concurrent build may have won, which is fine
        except OSError:
            if _built_library(target) is None:
                raise
    print(f"deepdream: native CPU kernels built in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return _built_library(target)


def _import(path: Path) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader("fastlayers.native._native", str(path))
    spec = importlib.util.spec_from_file_location("fastlayers.native._native", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _smoke_test(module: ModuleType) -> None:
    """A tiny depthwise and full convolution and pool against numpy: catches a library built for another MLX/nanobind ABI."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 5, 3)).astype(np.float32)
    taps = rng.standard_normal((3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(3).astype(np.float32)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = bias + sum(padded[:, i:i + 4, j:j + 5] * taps[i, j] for i in range(3) for j in range(3))
    with mx.stream(mx.cpu):
        got = np.array(module.depthwise_conv2d(mx.array(x), mx.array(taps), mx.array(bias), 1, 1, 1, 4, 5))
    with mx.stream(mx.cpu):
        pooled = np.array(module.max_pool2d(mx.array(x), 3, 3, 2, 2, 1, 1, 2, 3))
    expected_pool = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    expected_pool = np.stack([np.stack([expected_pool[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(0, 1))
                                        for j in range(3)]) for i in range(2)])[None]
    conv_ok = True
    if module.has_sgemm():       # else fastlayers.conv never calls conv2d
        weight = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
        with mx.stream(mx.cpu):
            conv = np.array(module.conv2d(mx.array(x), mx.array(weight), mx.zeros((2,)), 1, 1, 4, 5))
        windows = np.stack([np.stack([padded[:, i:i + 4, j:j + 5] for j in range(3)], axis=3) for i in range(3)], axis=3)
        conv_ok = np.allclose(conv, np.einsum("nhwijc,oijc->nhwo", windows, weight), atol=1e-4)
    if not (np.allclose(got, expected, atol=1e-5) and np.array_equal(pooled, expected_pool) and conv_ok):
        raise RuntimeError("the built library computes wrong values")


def load() -> ModuleType | None:
    """The extension module, building it first if needed; None (and ``status`` says why) if unavailable."""
    global _module, status, _tried
    if _tried:
        return _module
    _tried = True
    if os.environ.get(DISABLE_VAR, "") not in ("", "0"):
        status = f"off ({DISABLE_VAR} is set)"
        return None
    try:
        target = cache_root() / _build_key()
        library = _built_library(target) if target.is_dir() else None
        if library is None:
            library = _build(target)
        module = _import(library)
        module.set_threads(threads.count())
        _smoke_test(module)
    except ImportError as exc:
        status = f"unavailable ({exc}; pip install -r requirements.txt)"
        return None
    except Exception as exc:  # a missing compiler, a failed build, an ABI mismatch: fall back, say why
        status = f"unavailable ({exc})"
        return None
    _module = module
    status = f"built and loaded from {library}"
    return module


def for_array(x: mx.array) -> ModuleType | None:
    """The kernels for an operation on ``x``, or None where they do not apply: they are float32
    CPU primitives (other devices keep MLX's own operations), or they are unavailable here."""
    if x.dtype != mx.float32 or mx.default_device().type != mx.DeviceType.cpu:
        return None
    return load()

"""Put a fast BLAS into the process before MLX is imported (Linux only).

The ``mlx-cpu`` wheel for Linux bundles the reference netlib BLAS, an unoptimised triple loop
that makes every convolution and matrix product many times slower than an optimised BLAS
(MKL, OpenBLAS) on the same machine. MLX resolves ``sgemm_`` /
``cblas_sgemm`` through the global symbol scope, so loading a real BLAS with
``RTLD_GLOBAL`` *before* ``mlx.core`` is first imported makes MLX use it.

Search order:
1. ``$DEEPDREAM_BLAS`` (a path to any shared library exporting the standard symbols);
2. ``libmkl_rt`` from the ``mkl`` wheel (installed by requirements.txt on Linux);
3. Debian/Ubuntu's OpenBLAS (``libopenblas0-pthread``).
NumPy's bundled OpenBLAS does not work: its symbols carry a prefix.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib.metadata
import os
import sys
import warnings
from collections.abc import Iterator

ENV_VAR = "DEEPDREAM_BLAS"

_SYSTEM_OPENBLAS = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)

#: Path of the BLAS loaded into the process, or a description of why none was.
blas_in_use: str = "not loaded yet"

# glibc mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _candidates() -> list[str]:
    paths: list[str] = []
    if os.environ.get(ENV_VAR):
        paths.append(os.environ[ENV_VAR])
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        paths += sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")))
    paths += [p for p in _SYSTEM_OPENBLAS if os.path.exists(p)]
    return paths


#: MLX's GPU wheels for Linux; with one installed MLX runs on the GPU and the BLAS is optional.
_GPU_WHEELS = ("mlx-cuda-13", "mlx-cuda-12")


def gpu_wheel() -> str | None:
    """The MLX CUDA wheel installed in this environment, if any (asked without importing MLX)."""
    for name in _GPU_WHEELS:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel (Linux).

    MLX's CPU backend has no buffer cache: every intermediate array is a fresh malloc, and
    glibc serves big ones with mmap and unmaps them on free, so each dream step page-faults
    (and the kernel zeroes) all of its activations again, a sizeable share of a convolution's
    forward+backward time (``perf`` shows it as page faults). Raising the
    mmap and trim thresholds keeps those pages in the heap, where the next step reuses them.
    Peak memory is unchanged; the process just keeps its peak. Returns whether it applied.
    """
    if sys.platform != "linux":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt     # glibc's; musl and others have none
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # glibc may refuse thresholds above its heap limit; 32 MiB is accepted everywhere.
    applied = bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30) or mallopt(_M_MMAP_THRESHOLD, 32 << 20))
    mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1)
    return applied


def ensure_fast_blas() -> str:
    """Load the first working fast BLAS globally; return what is in use. Idempotent.

    Also tunes the allocator for MLX on CPU (``keep_freed_memory``), and under ``mlx.launch``
    sets each rank's thread count, which the BLAS reads when it loads."""
    global blas_in_use
    if blas_in_use != "not loaded yet":
        return blas_in_use
    keep_freed_memory()
    from deepdream.distributed import set_rank_threads  # stdlib only: safe before MLX

    set_rank_threads()
    if sys.platform != "linux":
        blas_in_use = "platform default (Accelerate on macOS)"
        return blas_in_use
    if "mlx.core" in sys.modules:
        warnings.warn(
            "mlx.core was imported before `models`; the fast BLAS cannot be injected and "
            "MLX runs 30-100x slower on CPU. Import `models` first.",
            stacklevel=3,
        )
    errors = []
    for path in _candidates():
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            errors.append(f"{path}: {exc}")
            continue
        blas_in_use = path
        return blas_in_use
    blas_in_use = "reference BLAS bundled with mlx (slow)"
    if gpu_wheel():
        # MLX dreams on the GPU here; the CPU's BLAS only serves the rare CPU-side operation.
        return blas_in_use
    detail = f" ({'; '.join(errors)})" if errors else ""
    print(
        "deepdream: no fast BLAS found, MLX will be 30-100x slower on CPU. "
        f"Fix: `pip install mkl`, `apt-get install libopenblas0-pthread`, or set {ENV_VAR}=/path/to/libblas.so"
        + detail,
        file=sys.stderr,
    )
    return blas_in_use


def _mkl() -> ctypes.CDLL | None:
    """The loaded libmkl_rt (loading it again only finds it), or None with another BLAS."""
    if os.path.basename(blas_in_use).startswith("libmkl_rt"):
        return ctypes.CDLL(blas_in_use)
    return None


def threading_state() -> tuple[int, int, int] | None:
    """MKL's (process thread count, this thread's own count or 0, dynamic threading); None with another BLAS."""
    mkl = _mkl()
    if mkl is None:
        return None
    # torch sets this thread's own count too, which hides the process's: read that under none
    local = mkl.MKL_Set_Num_Threads_Local(0)
    threads = mkl.MKL_Get_Max_Threads()
    mkl.MKL_Set_Num_Threads_Local(local)
    return threads, local, mkl.MKL_Get_Dynamic()


@contextlib.contextmanager
def threading_kept() -> Iterator[None]:
    """Put MKL's threading back as it was on leaving (a no-op with another BLAS).

    ``torch.set_num_threads`` reaches the ``libmkl_rt`` loaded here and turns MKL's dynamic
    threading off for the whole process, and restoring torch's count does not turn it back on.
    MLX's matrix products then split their work otherwise and round differently, so a dream run
    after a torch reference in the same process (a test, a benchmark) would not be bitwise the
    dream of a fresh process.
    """
    state = threading_state()
    try:
        yield
    finally:
        if state is not None:
            mkl, (threads, local, dynamic) = _mkl(), state
            mkl.MKL_Set_Num_Threads(threads)
            mkl.MKL_Set_Num_Threads_Local(local)
            mkl.MKL_Set_Dynamic(dynamic)

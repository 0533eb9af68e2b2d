"""Put a fast BLAS into the process before MLX is imported (Linux only).

The ``mlx-cpu`` wheel for Linux bundles the reference netlib BLAS, which makes every
convolution 30-100x slower than it needs to be (NOTES §1). MLX resolves ``sgemm_`` /
``cblas_sgemm`` through the global symbol scope, so loading a real BLAS with
``RTLD_GLOBAL`` *before* ``mlx.core`` is first imported makes MLX use it.

Search order:
1. ``$DEEPDREAM_BLAS`` (a path to any shared library exporting the standard symbols);
2. ``libmkl_rt`` from the ``mkl`` wheel (installed by requirements.txt on Linux);
3. Debian/Ubuntu's OpenBLAS (``libopenblas0-pthread``).
NumPy's bundled OpenBLAS does not work: its symbols carry a prefix.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
import warnings

ENV_VAR = "DEEPDREAM_BLAS"

_SYSTEM_OPENBLAS = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)

#: Path of the BLAS loaded into the process, or a description of why none was.
blas_in_use: str = "not loaded yet"


def _candidates() -> list[str]:
    paths: list[str] = []
    if os.environ.get(ENV_VAR):
        paths.append(os.environ[ENV_VAR])
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        paths += sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")))
    paths += [p for p in _SYSTEM_OPENBLAS if os.path.exists(p)]
    return paths


def ensure_fast_blas() -> str:
    """Load the first working fast BLAS globally; return what is in use. Idempotent."""
    global blas_in_use
    if blas_in_use != "not loaded yet":
        return blas_in_use
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
    detail = f" ({'; '.join(errors)})" if errors else ""
    print(
        "deepdream: no fast BLAS found, MLX will be 30-100x slower on CPU. "
        f"Fix: `pip install mkl`, `apt-get install libopenblas0-pthread`, or set {ENV_VAR}=/path/to/libblas.so"
        + detail,
        file=sys.stderr,
    )
    return blas_in_use

"""How many threads the CPU kernels run on: one answer for the BLAS and the native kernels.

The BLAS (MKL, OpenBLAS) reads its thread count from the environment when it loads;
``count`` reads the same variables, in the order MKL honours them, so the native kernels
(``fastlayers/native``) split their work over as many threads as the BLAS's products do.
Without any of them set, every core this process may run on.
"""

from __future__ import annotations

import os

#: The variables the BLAS libraries read, most specific first (MKL's own, then OpenMP's, then OpenBLAS's).
ENV_VARS = ("MKL_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def count() -> int:
    """Threads for the CPU kernels: the first of ``ENV_VARS`` set to a positive whole number, else the cores."""
    for var in ENV_VARS:
        value = os.environ.get(var, "").strip().split(",")[0]
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):     # not on Linux
        return os.cpu_count() or 1

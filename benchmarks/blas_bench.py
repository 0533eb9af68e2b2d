"""Which BLAS under MLX (Linux CPU): our dream step with each one, side by side, each in its own process.

    python -m benchmarks.blas_bench                                   # MKL vs scipy's own OpenBLAS
    python -m benchmarks.blas_bench --blas debian=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0
    python -m benchmarks.blas_bench --models efficientnet_lite0 --repeats 5 --reference

MLX takes the BLAS that ``fastlayers/_blas.py`` loads before it (``DEEPDREAM_BLAS`` names one).
The candidates: MKL (the ``mkl`` wheel that requirements.txt installs, the big part of the
install), and the OpenBLAS that scipy's wheel already carries (``scipy.libs``), which costs no
download but whose symbols are renamed (``scipy_cblas_sgemm``): MLX cannot find them. A few
lines of C forwarding ``cblas_sgemm`` (all of MLX's convolutions and products) to it make it
usable; this script compiles that shim with the system C compiler into a temporary folder, for
the measurement only. ``--blas NAME=PATH`` adds any library that exports the standard names.

Each BLAS runs in a worker process of its own (the library is fixed for a process's life); the
workers take turns (A, B, A, B) so load changes on a shared machine hit all alike. Per model: the
compiled dream step on random weights (speed does not depend on the values), the median and the
best wall time; first the 2048^3 sgemm rate. Printed as a markdown table.
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: Model, dream layers, square size of the timed step.
STEPS = (("efficientnet_lite0", ("block10",), 512), ("googlenet", ("inception4c",), 512),
         ("vgg16", ("relu4_2",), 384))

SHIM_SOURCE = """
/* The standard CBLAS names MLX and fastlayers/native call, forwarded to scipy's renamed OpenBLAS. */
void scipy_cblas_sgemm(int, int, int, int, int, int, float, const float *, int, const float *, int,
                       float, float *, int);
void scipy_cblas_dgemm(int, int, int, int, int, int, double, const double *, int, const double *, int,
                       double, double *, int);
void scipy_cblas_cgemm(int, int, int, int, int, int, const void *, const void *, int, const void *, int,
                       const void *, void *, int);
void cblas_sgemm(int o, int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc) {
  scipy_cblas_sgemm(o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void cblas_dgemm(int o, int ta, int tb, int m, int n, int k, double alpha, const double *a, int lda,
                 const double *b, int ldb, double beta, double *c, int ldc) {
  scipy_cblas_dgemm(o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void cblas_cgemm(int o, int ta, int tb, int m, int n, int k, const void *alpha, const void *a, int lda,
                 const void *b, int ldb, const void *beta, void *c, int ldc) {
  scipy_cblas_cgemm(o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
"""


def mkl_path() -> str | None:
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        found = sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")))
        if found:
            return found[0]
    return None


def scipy_openblas_shim(folder: Path) -> str | None:
    """Compile the forwarding shim against scipy's bundled OpenBLAS; None without one or a compiler."""
    site = Path(sysconfig.get_paths()["purelib"])
    found = sorted((site / "scipy.libs").glob("libscipy_openblas*.so"))
    compiler = shutil.which("cc") or shutil.which("gcc")
    if not found or compiler is None:
        return None
    library = found[0]
    source = folder / "scipy_openblas_shim.c"
    source.write_text(SHIM_SOURCE)
    shim = folder / "libscipy_openblas_shim.so"
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", str(source), "-o", str(shim), str(library),
                    f"-Wl,-rpath,{library.parent}"], check=True)
    return str(shim)


def reference_path() -> str | None:
    """The reference BLAS the mlx-cpu wheel bundles: what MLX uses with no fast BLAS loaded."""
    site = Path(sysconfig.get_paths()["purelib"])
    found = sorted((site / "mlx_cpu.libs").glob("libblas*.so*"))
    return str(found[0]) if found else None


# -- the worker (one BLAS for the life of the process) -----------------------------------------------

def _worker(blas: str, connection: Any) -> None:
    os.environ["DEEPDREAM_BLAS"] = blas
    sys.path.insert(0, str(ROOT))
    try:
        import models  # first: loads the BLAS under MLX  # isort: skip
        import mlx.core as mx

        from benchmarks.isolated import STEP_ARGS, test_image
        from deepdream.objectives import build_objective
        from deepdream.step import make_step
        from fastlayers import _blas

        if _blas.blas_in_use != blas:
            raise RuntimeError(f"{blas} did not load (in use: {_blas.blas_in_use})")
    except Exception as exc:  # answered to every command, so the parent reports it in one line
        failed = f"{type(exc).__name__}: {exc}"
        while connection.recv() is not None:
            connection.send({"error": failed})
        return
    run = None
    while (command := connection.recv()) is not None:
        try:
            op, *args = command
            if op == "sgemm":
                a, b = mx.random.normal((2048, 2048)), mx.random.normal((2048, 2048))
                mx.eval(a, b)
                run = lambda: mx.eval(a @ b)  # noqa: E731
                run()
                connection.send({})
            elif op == "prepare":
                name, layers, size = args
                model = models.build_model(name)
                mx.eval(model.parameters())
                step = make_step(model, build_objective(model, list(layers)))
                state = step.space.encode(test_image(size, size))
                run = lambda: step(state, *STEP_ARGS)  # noqa: E731
                for _ in range(2):
                    run()
                connection.send({})
            elif op == "time":
                start = time.perf_counter()
                run()
                connection.send({"seconds": time.perf_counter() - start})
            else:
                raise ValueError(f"unknown command {op!r}")
        except Exception as exc:
            connection.send({"error": f"{type(exc).__name__}: {exc}"})


class Worker:
    def __init__(self, name: str, blas: str) -> None:
        self.name = name
        self._connection, child = mp.get_context("spawn").Pipe()
        self._process = mp.get_context("spawn").Process(target=_worker, args=(blas, child), daemon=True)
        self._process.start()

    def ask(self, *command: Any) -> dict[str, float]:
        self._connection.send(command)
        answer = self._connection.recv()
        if "error" in answer:
            raise RuntimeError(f"{self.name}: {answer['error']}")
        return answer

    def close(self) -> None:
        self._connection.send(None)
        self._process.join(timeout=30)


def turns(workers: list[Worker], prepare: tuple, repeats: int) -> dict[str, dict[str, float]]:
    """Median and fastest seconds of each worker's ``prepare``d call, taking turns. The fastest is
    what a quiet machine gives; the median, what a busy one does."""
    for worker in workers:
        worker.ask(*prepare)
    times: dict[str, list[float]] = {w.name: [] for w in workers}
    for _ in range(repeats):
        for worker in workers:
            time.sleep(0.25)                     # the previous worker's BLAS threads stop spinning
            times[worker.name].append(worker.ask("time")["seconds"])
    return {name: {"wall": statistics.median(values), "fastest": min(values)} for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blas", action="append", default=[], metavar="NAME=PATH",
                        help="another BLAS library to compare (exports cblas_sgemm)")
    parser.add_argument("--models", nargs="+", default=[name for name, _, _ in STEPS],
                        choices=[name for name, _, _ in STEPS])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size", type=int, metavar="PX", help="one square size for every model's step (default: "
                        + ", ".join(f"{name} {size}" for name, _, size in STEPS) + ")")
    parser.add_argument("--reference", action="store_true",
                        help="also the reference BLAS the mlx-cpu wheel ships (slow: sgemm and efficientnet_lite0 only)")
    args = parser.parse_args(argv)
    if sys.platform != "linux":
        parser.exit(2, "error: the BLAS under MLX is chosen on Linux only (macOS uses Accelerate)\n")
    with tempfile.TemporaryDirectory(prefix="blas-bench-") as tmp:
        candidates = {"mkl": mkl_path(), "scipy's OpenBLAS (shim)": scipy_openblas_shim(Path(tmp))}
        for spec in args.blas:
            name, _, path = spec.partition("=")
            if not path or not Path(path).is_file():
                parser.exit(2, f"error: --blas {spec}: expected NAME=PATH of an existing library\n")
            candidates[name] = path
        if args.reference:
            candidates["reference (mlx-cpu's own)"] = reference_path()
        missing = [name for name, path in candidates.items() if path is None]
        for name in missing:
            print(f"skipped {name}: not found here", file=sys.stderr)
        workers = [Worker(name, path) for name, path in candidates.items() if path is not None]
        try:
            rows = [("sgemm 2048^3", "GFLOP/s", turns(workers, ("sgemm",), args.repeats))]
            for name, layers, size in STEPS:
                size = args.size or size
                if name in args.models:
                    chosen = [w for w in workers if "reference" not in w.name or name == "efficientnet_lite0"]
                    rows.append((f"{name} step {size}x{size} ({', '.join(layers)})", "ms",
                                 turns(chosen, ("prepare", name, layers, size), args.repeats)))
        finally:
            for worker in workers:
                worker.close()
    names = [w.name for w in workers]
    print(f"| measurement | {' | '.join(names)} |")
    print(f"|---|{'---|' * len(names)}")
    for label, unit, result in rows:
        cells = []
        for name in names:
            if name not in result:
                cells.append("-")
            elif unit == "GFLOP/s":
                cells.append(f"{2 * 2048 ** 3 / result[name]['wall'] / 1e9:.0f} "
                             f"({2 * 2048 ** 3 / result[name]['fastest'] / 1e9:.0f})")
            else:
                cells.append(f"{result[name]['wall'] * 1e3:.0f} ({result[name]['fastest'] * 1e3:.0f})")
        print(f"| {label}, {unit} median (best) | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""fastlayers.threads: one thread count for the BLAS and the native kernels, which run on the BLAS's threads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastlayers import native, threads

ROOT = Path(__file__).resolve().parents[2]


def test_count_reads_the_variables_the_blas_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in threads.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    assert threads.count() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    assert threads.count() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "5,2")           # nested levels: the outer one
    assert threads.count() == 5
    monkeypatch.setenv("MKL_NUM_THREADS", "7")             # MKL's own wins, as in MKL
    assert threads.count() == 7
    monkeypatch.setenv("MKL_NUM_THREADS", "lots")          # not a count: the next one
    assert threads.count() == 5


def test_native_kernels_use_that_count_and_the_blas_openmp_threads() -> None:
    """In a process like dream.py's (no torch), after MKL's first product the kernels' parallel
    loops run on its OpenMP team; the thread count is fastlayers.threads.count()."""
    if native.load() is None:
        pytest.skip(f"native kernels unavailable: {native.status}")
    code = (
        "import models, mlx.core as mx, numpy as np\n"
        "from fastlayers import native, threads\n"
        "from fastlayers.pooling import max_pool2d\n"
        "k = native.load()\n"
        "assert k.thread_count() == threads.count() == 3, (k.thread_count(), threads.count())\n"
        "a = mx.random.normal((256, 256)); mx.eval(a @ a)\n"
        "print(k.parallel_runtime())\n"
        "x = mx.random.normal((1, 40, 40, 70))\n"
        "y = np.array(max_pool2d(x, 3, 2))\n"
        "ref = np.lib.stride_tricks.sliding_window_view(np.array(x)[0], (3, 3), axis=(0, 1))[::2, ::2].max(axis=(-2, -1))\n"
        "assert np.array_equal(y[0], ref)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MKL_NUM_THREADS": "3"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    import models

    if "mkl" not in models.ensure_fast_blas():
        pytest.skip("the BLAS here is not MKL (no OpenMP team to share)")
    assert result.stdout.strip() == "openmp"


def test_count_agrees_with_the_threads_each_rank_is_given(tmp_path: Path) -> None:
    """Under mlx.launch with two ranks on this host, deepdream.distributed gives each rank half the
    cores through the BLAS's variables before MKL loads; the native kernels split their loops over
    the same number."""
    if native.load() is None:
        pytest.skip(f"native kernels unavailable: {native.status}")
    hosts = tmp_path / "hosts.json"
    hosts.write_text('[["127.0.0.1:5000"], ["127.0.0.1:5001"]]')
    code = (
        "import os, models\n"
        "from deepdream import distributed as dist\n"
        "from fastlayers import native, threads\n"
        "k = native.load()\n"
        "print(dist.rank_threads, threads.count(), k.thread_count(), os.environ['MKL_NUM_THREADS'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in threads.ENV_VARS and not k.endswith("_NUM_THREADS")}
    env.update({"PYTHONPATH": str(ROOT), "MLX_RANK": "1", "MLX_HOSTFILE": str(hosts)})
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    half = str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert result.stdout.split() == [half] * 4

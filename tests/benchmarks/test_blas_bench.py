"""benchmarks/blas_bench.py: each BLAS under MLX in a process of its own, one table."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.blas_bench", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


@pytest.mark.skipif(sys.platform != "linux" or shutil.which("cc") is None, reason="Linux with a C compiler")
def test_compares_mkl_and_scipys_openblas():
    from benchmarks.blas_bench import mkl_path

    result = bench("--models", "efficientnet_lite0", "--size", "96", "--repeats", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[1:] == (["mkl"] if mkl_path() else []) + ["scipy's OpenBLAS (shim)"]
    rows = {line.split("|")[1].strip(): line for line in lines[2:]}
    assert set(rows) == {"sgemm 2048^3, GFLOP/s median (best)", "efficientnet_lite0 step 96x96 (block10), ms median (best)"}
    for row in rows.values():
        assert len(re.findall(r"\| \d+ \(\d+\)", row)) == len(header) - 1, row


def test_a_missing_library_is_one_line_error(tmp_path):
    result = bench("--blas", f"mine={tmp_path / 'nothing.so'}")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("expected NAME=PATH of an existing library")

"""fastlayers/_blas.py: what the process's BLAS is left doing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import models

ROOT = Path(__file__).resolve().parents[2]


def test_threading_kept_undoes_what_torch_set_num_threads_does_to_mkl() -> None:
    """torch.set_num_threads turns the shared MKL's dynamic threading off for the whole process;
    inside threading_kept it comes back on leaving (checked in a fresh process, so this test
    changes nothing in its own)."""
    pytest.importorskip("torch")
    if "libmkl_rt" not in models.ensure_fast_blas():
        pytest.skip("the BLAS here is not MKL")
    code = (
        "import ctypes, models, torch\n"
        "from fastlayers import _blas\n"
        "mkl = ctypes.CDLL(_blas.blas_in_use)\n"
        "state = lambda: (mkl.MKL_Get_Dynamic(), mkl.MKL_Get_Max_Threads())\n"
        "before = state()\n"
        "with _blas.threading_kept():\n"
        "    torch.set_num_threads(1)\n"
        "kept = state()\n"
        "torch.set_num_threads(1)\n"
        "print(before, kept, state())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    before, kept, unkept = (eval(part + ")") for part in result.stdout.strip()[:-1].split(") "))
    assert kept == before
    assert unkept != before    # what the context undoes: torch's call alone leaves MKL changed

"""fastlayers/_blas.py: what the process's BLAS is left doing."""

from __future__ import annotations

import json
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
        "import json, models, torch\n"
        "from fastlayers._blas import threading_kept, threading_state\n"
        "before = threading_state()\n"
        "with threading_kept():\n"
        "    torch.set_num_threads(1)\n"
        "kept = threading_state()\n"
        "torch.set_num_threads(1)\n"
        "print(json.dumps([before, kept, threading_state()]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    before, kept, unkept = json.loads(result.stdout)
    assert kept == before
    assert unkept != before    # what the context undoes: torch's call alone leaves MKL changed

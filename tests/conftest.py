"""Shared fixtures. Tests run offline on CPU; weights go to a per-session temporary folder."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import models  # noqa: E402,F401  (fast BLAS before anything imports mlx)

# The model-port tests' shared helpers (``from tests.parity import ...``): pytest's detailed assert messages.
pytest.register_assert_rewrite("tests.parity")


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    """An isolated weights folder (DEEPDREAM_WEIGHTS_DIR), shared by the whole test session."""
    path = tmp_path_factory.mktemp("weights")
    os.environ["DEEPDREAM_WEIGHTS_DIR"] = str(path)
    return path


@pytest.fixture
def terminal_sigint():
    """Children started during the test get SIGINT's default action, as from an interactive shell.

    A shell without job control starts background jobs (``cmd &``, CI runners) with SIGINT
    ignored, and an ignored signal stays ignored across exec: Python then installs no
    KeyboardInterrupt handler, and a Ctrl-C test's child would ignore the signal and finish its
    work (exit 0). A *handled* signal is reset to the default by exec, so the test process
    handles SIGINT (Python's own default) while it runs.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(params=["native", "mlx-ops"])
def cpu_kernels(request, monkeypatch) -> str:
    """Runs a test on both CPU paths of an operation that has one: ``fastlayers/native``'s C++ kernel
    and the pure-MLX fallback (selected by making ``native.load`` report no kernels)."""
    import shutil

    from fastlayers import native

    if request.param == "mlx-ops":
        monkeypatch.setattr(native, "load", lambda: None)
    elif native.load() is None:
        if shutil.which("cmake") is None or os.environ.get(native.DISABLE_VAR):
            pytest.skip(f"native kernels: {native.status}")
        pytest.fail(f"native kernels should build here (cmake present): {native.status}")
    return request.param


@pytest.fixture(scope="module", autouse=True)
def blas_threading_unchanged():
    """Each test module leaves MKL's threading as it found it: later modules compare dreams made in
    this process with other processes' bytes, and MKL's threading changes how MLX's products round."""
    from fastlayers import _blas

    before = _blas.threading_state()
    yield
    after = _blas.threading_state()
    if after != before:
        pytest.fail(f"this module left MKL's threading (threads, this thread's, dynamic) at {after}, not {before}; "
                    "call torch.set_num_threads inside fastlayers._blas.threading_kept()", pytrace=False)

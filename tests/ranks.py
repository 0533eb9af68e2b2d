"""Start ranks for the tests: under ``mlx.launch`` (ring backend, localhost), or by hand the way
``mlx.launch`` does (``MLX_RANK`` + ``MLX_HOSTFILE``), so that a test can prove what our own
watchdog does without the launcher stopping ranks for it.

Every job gets ports no other job is using (helpers and CI may run rank tests side by side).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = Path(sys.executable).parent / "mlx.launch"


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive TCP ports on localhost that nothing listens on."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - n)
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free ports")


def launch_command(argv: Sequence[str], ranks: int = 2) -> list[str]:
    """``mlx.launch -n ranks --backend ring -- python argv`` on free ports."""
    return [str(LAUNCHER), "-n", str(ranks), "--backend", "ring", "-p", str(free_ports(ranks)),
            "--", sys.executable, *argv]


def launch(argv: Sequence[str], ranks: int = 2, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(launch_command(argv, ranks), capture_output=True, text=True, timeout=timeout,
                          cwd=kwargs.pop("cwd", ROOT), **kwargs)


def start_launch(argv: Sequence[str], ranks: int = 2, **kwargs) -> subprocess.Popen:
    """The launcher in a session of its own: ``os.killpg(p.pid, SIGINT)`` is a terminal's Ctrl-C."""
    return subprocess.Popen(launch_command(argv, ranks), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=kwargs.pop("cwd", ROOT), **kwargs)


def start_by_hand(argv: Sequence[str], folder: Path, ranks: int = 2, env: dict[str, str] | None = None,
                  cwds: Sequence[Path] | None = None) -> list[subprocess.Popen]:
    """Every rank as its own process, with the environment mlx.launch would give it; ``cwds``: each
    rank's working folder (a host of its own, where the launching one's files are not)."""
    base = free_ports(ranks)
    hostfile = folder / "hostfile.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{base + r}"] for r in range(ranks)]))
    return [subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=cwds[r] if cwds else ROOT, env={**os.environ, **(env or {}), "MLX_RANK": str(r),
                                                                 "MLX_HOSTFILE": str(hostfile)})
            for r in range(ranks)]


def rank_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the ranks a launcher started (their environment names their rank)."""
    found = {}
    children = subprocess.run(["pgrep", "-s", str(os.getsid(launcher.pid))], capture_output=True, text=True).stdout
    for pid in map(int, children.split()):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        rank = next((int(e.split(b"=", 1)[1]) for e in environ if e.startswith(b"MLX_RANK=")), None)
        if rank is not None and cmdline.startswith(sys.executable.encode()) and pid != launcher.pid:
            found[rank] = pid
    return found


def error_lines(stderr: str) -> list[str]:
    """The ``error:`` lines of a job's stderr (progress bars end their lines with carriage returns)."""
    return [line.strip() for line in re.split(r"[\r\n]", stderr) if line.strip().startswith("error:")]


def kill_rank(launcher: subprocess.Popen, rank: int = 1, within: float = 60.0) -> str:
    """kill -9 one rank of a launched job; once every rank has stopped (within ``within`` seconds, no
    traceback), the one error line, which names that rank."""
    started = time.monotonic()
    os.kill(rank_pids(launcher)[rank], signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=within)
    assert time.monotonic() - started < within and "Traceback" not in stderr, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: rank {rank} (host 127.0.0.1) ended without finishing"), \
        stderr
    return lines[0]

"""One benchmark configuration in processes of its own: a worker script, alone or under ``mlx.launch``.

``benchmarks/scale_out.py`` and ``benchmarks/train_ranks.py`` time the same work on 1 and on several
ranks; each runs its own file with ``--worker`` and reads back the ``result.json`` rank 0 writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from deepdream import distributed as dist

ROOT = Path(__file__).resolve().parent.parent


def run_worker(argv: Sequence[str], ranks: int, threads: int | None, out: Path, what: str) -> dict:
    """``python argv`` on ``ranks`` ranks (``mlx.launch`` on localhost when more than one), then the
    ``result.json`` it wrote in ``out``. ``threads``: each process's thread count, or None to let
    ``dist.set_rank_threads`` share the host's cores out between the ranks. Exits naming ``what``
    when the run failed."""
    out.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in dist.THREAD_VARS}
    if threads is not None:
        env.update({v: str(threads) for v in dist.THREAD_VARS})
    command = [sys.executable, *argv]
    if ranks > 1:
        from tests.ranks import launch_command  # free ports for the ring

        command = launch_command(argv, ranks)
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0 or not (out / "result.json").exists():
        sys.exit(f"error: {what} failed: {proc.stderr[-2000:]}")
    return json.loads((out / "result.json").read_text())

"""Run by tests/deepdream/test_distributed.py on every rank: ``python distributed_worker.py MODE OUT``.

MODE ``collectives``: each rank writes ``OUT/rank<r>.json`` with what the collectives gave it.
MODE ``loop``: all_sum forever under the watchdog (the test kills or freezes a rank).
MODE ``fail1``: rank 1 alone raises a user error mid-job; ``fail_all``: every rank raises the same one.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import models  # noqa: E402,F401  (fast BLAS before mlx)
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from deepdream import distributed as dist  # noqa: E402
from deepdream.errors import DreamError, exit_code  # noqa: E402


def job(mode: str, out: Path) -> None:
    with dist.session("rerun to finish"):
        r = dist.rank()
        (out / f"ready{r}").write_text(str(os.getpid()))
        if mode == "collectives":
            arrays = dist.broadcast_arrays([np.full((2, 3), r + 1, np.float32), np.arange(4, dtype=np.int64) * (r + 1)])
            (out / f"rank{r}.json").write_text(json.dumps({
                "size": dist.size(), "describe": dist.describe(), "threads": os.environ.get("MKL_NUM_THREADS"),
                "json": dist.broadcast_json({"from": r}), "gathered": dist.gather_json({"r": r, "pad": "x" * r}),
                "arrays": [a.tolist() for a in arrays], "sum": float(dist.all_sum(mx.array([r + 1.0])).item()),
                "any": [dist.any_rank(r == 1), dist.any_rank(False)], "part": [dist.part(7).start, dist.part(7).stop]}))
            dist.barrier()
            dist.print0("printed once")
        elif mode == "loop":
            while True:
                dist.all_sum(mx.ones((1000,)))
                time.sleep(0.05)
        elif mode == "fail1":
            dist.barrier()
            if r == 1:
                raise DreamError("cannot read photo.png (truncated); replace the file")
            while True:
                dist.all_sum(mx.ones((10,)))
        elif mode == "fail_all":
            time.sleep(0.3 * r)
            raise DreamError("--steps must be at least 1 (got 0)")


if __name__ == "__main__":
    sys.exit(exit_code(lambda: job(sys.argv[1], Path(sys.argv[2]))))

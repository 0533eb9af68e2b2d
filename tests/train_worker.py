"""Run by tests/test_train_dream_ranks.py, alone or under ``mlx.launch``: fine-tune with the engine
``train_dream.py`` uses and record what the tests compare.

    python tests/train_worker.py OUT_DIR DATA_DIR '{"model": "efficientnet_lite0", ...}' [--no-compile]

Rank 0 writes ``OUT_DIR/result.json`` (every step's global loss, each rank's weights digest,
the validation accuracies) and ``OUT_DIR/weights.npz`` (every parameter after training).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models  # noqa: E402,F401  (fast BLAS before mlx)
import numpy as np  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from deepdream import distributed as dist  # noqa: E402
from deepdream.dataset import scan_image_folder  # noqa: E402
from deepdream.training import StopRequest, TrainConfig, fit, prepare_run, start  # noqa: E402


def main(out: Path, data: Path, config: dict, compile: bool) -> None:
    with dist.session("a test worker"):
        run = prepare_run(TrainConfig(**config), scan_image_folder(data))
        start(run, None)
        losses: list[float] = []
        fit(run, out / "ck" / "last.npz", StopRequest(), quiet=True, log=lambda _line: None, compile=compile,
            on_step=lambda _epoch, _batch, loss: losses.append(loss))
        arrays = {k: np.array(v) for k, v in tree_flatten(run.model.parameters())}
        digest = hashlib.sha256(b"".join(k.encode() + v.tobytes() for k, v in sorted(arrays.items()))).hexdigest()
        digests = dist.gather_json(digest)
        if dist.is_main():
            np.savez(out / "weights.npz", **arrays)
            (out / "result.json").write_text(json.dumps({
                "losses": losses, "digests": digests, "ranks": dist.size(),
                "val_acc": [h["val_acc"] for h in run.history],
                "comm_seconds": getattr(run.step, "comm_seconds", 0.0)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]), "--no-compile" not in sys.argv[4:])

"""train_dream.py on several processes (``mlx.launch``, ring backend, localhost): two ranks train
as one process does, stop together, and resume on any number of ranks.

The data and sizes are tests/test_train_dream.py's shapes (72 images, 64 px crops). Two-rank
runs with trainable BatchNorms are eager (``--no-compile``): on a fresh machine the compiled
step's kernels for each new batch shape take longer to build than the whole run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from models.weights import read_metadata, read_weights
from tests import ranks
from tests.ranks import error_lines
from tests.test_train_dream import MIN_VAL_ACC, effnet, shapes, val_accuracies  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parent.parent
WORKER = str(ROOT / "tests" / "train_worker.py")
#: Only the classifier trains: every BatchNorm uses its ImageNet statistics (eval mode), so a
#: rank's share of a batch is computed exactly as in the whole batch. 54 training images in
#: batches of 12: 5 steps per epoch, 10 in all.
FROZEN_BN = {"model": "efficientnet_lite0", "epochs": 2, "batch_size": 12, "image_size": 64, "val_split": 0.25,
             "seed": 0, "freeze_to": "head", "lr": 0.05}
#: The model's default freezing (stem..block4): blocks 5-15 and the head train, BatchNorms included.
TRAINABLE_BN = {"model": "efficientnet_lite0", "epochs": 4, "batch_size": 16, "image_size": 64, "val_split": 0.25,
                "seed": 0}


def worker(out: Path, data: Path, config: dict, n: int, *flags: str) -> dict:
    """Train with the engine on ``n`` ranks; what rank 0 recorded (tests/train_worker.py)."""
    out.mkdir(parents=True, exist_ok=True)
    argv = [WORKER, str(out), str(data), json.dumps(config), *flags]
    started = time.monotonic()
    proc = (ranks.launch(argv, n, timeout=120) if n > 1 else
            subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120))
    assert proc.returncode == 0 and "exited with code" not in proc.stderr, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    result["seconds"] = time.monotonic() - started
    result["weights"] = dict(np.load(out / "weights.npz"))
    return result


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def test_two_ranks_train_as_one_with_frozen_batchnorm(shapes: Path, effnet: Path, tmp_path: Path) -> None:
    """The compiled data-parallel step: 10 steps' global losses and the final weights equal one
    process's (1e-4 relative; measured: within 4e-7), and both ranks hold identical weights."""
    one = worker(tmp_path / "one", shapes, FROZEN_BN, 1)
    two = worker(tmp_path / "two", shapes, FROZEN_BN, 2)
    assert two["ranks"] == 2 and len(set(two["digests"])) == 1  # every rank, the same weights
    assert len(one["losses"]) == len(two["losses"]) == 10
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-4)
    for key, value in one["weights"].items():
        assert relative(value, two["weights"][key]) < 1e-4, key
    assert two["comm_seconds"] > 0 and two["seconds"] < 60


def test_trainable_batchnorm_and_validation_accuracy(shapes: Path, effnet: Path, tmp_path: Path) -> None:
    """Trainable BatchNorms normalise with each rank's share (8 images, not 16), as PyTorch DDP
    without SyncBatchNorm: the first step's loss is a few per cent off one process's (measured
    2.1 %) and the runs then take their own paths. Their running statistics are averaged over
    ranks, so the ranks' weights stay identical; and both runs reach the same validation accuracy
    (measured: 0.667, 0.944, 1.0, 1.0 per epoch, for both)."""
    one = worker(tmp_path / "one", shapes, TRAINABLE_BN, 1, "--no-compile")
    two = worker(tmp_path / "two", shapes, TRAINABLE_BN, 2, "--no-compile")
    assert len(set(two["digests"])) == 1
    first = abs(two["losses"][0] - one["losses"][0]) / one["losses"][0]
    assert 1e-4 < first < 0.1, (one["losses"][0], two["losses"][0])
    assert one["val_acc"][-1] >= MIN_VAL_ACC and two["val_acc"][-1] >= MIN_VAL_ACC, (one["val_acc"], two["val_acc"])
    assert two["seconds"] < 60


# -- the command line ------------------------------------------------------------------------

#: A run long enough to be stopped mid-way: 3 epochs of 14 batches of 4.
CLI_FROZEN = ["--model", "efficientnet_lite0", "--epochs", "3", "--batch-size", "4", "--image-size", "64",
              "--val-split", "0.25", "--seed", "0", "--freeze-to", "head", "--lr", "0.05", "--no-compile"]


def cli_args(data: Path, folder: Path, *extra: str) -> list[str]:
    return [str(ROOT / "train_dream.py"), "--data", str(data), *extra, "--checkpoint-dir", str(folder / "ck"),
            "--out", str(folder / "out.npz")]


def run_one(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def reference(shapes: Path, effnet: Path, tmp_path_factory) -> Path:
    """CLI_FROZEN on one process, uninterrupted: its output file."""
    folder = tmp_path_factory.mktemp("reference")
    run_one(cli_args(shapes, folder, *CLI_FROZEN, "--quiet"))
    return folder / "out.npz"


def assert_same_weights(path: Path, reference: Path) -> None:
    got, _ = read_weights(path)
    want, _ = read_weights(reference)
    assert got.keys() == want.keys()
    for key in want:
        assert relative(want[key], got[key]) < 1e-4, key


def test_two_ranks_from_the_command_line(shapes: Path, effnet: Path, tmp_path: Path) -> None:
    """`mlx.launch -n 2 -- python train_dream.py ...`: one header and one line per epoch (rank 0
    prints alone), the weights file and the checkpoint written once; same accuracy as one process."""
    args = cli_args(shapes, tmp_path, "--model", "efficientnet_lite0", "--epochs", "4", "--batch-size", "16",
                    "--image-size", "64", "--val-split", "0.25", "--seed", "0", "--no-compile")
    proc = ranks.launch(args, 2, timeout=120)
    assert proc.returncode == 0 and not error_lines(proc.stderr) and "exited with code" not in proc.stderr, proc.stderr
    assert proc.stdout.count("over 2 ranks (ring)") == 1 and proc.stdout.count("wrote ") == 1, proc.stdout
    accs = val_accuracies(proc.stdout)
    assert len(accs) == 4 and accs[-1] >= MIN_VAL_ACC, proc.stdout
    assert read_metadata(tmp_path / "out.npz")["training"]["epochs"] == 4
    assert read_metadata(tmp_path / "ck" / "last.npz")["epoch"] == 4
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["last.npz"]  # no temporary files


def launch_until_first_checkpoint(data: Path, folder: Path) -> tuple[subprocess.Popen, Path]:
    """Two ranks training CLI_FROZEN, returned once epoch 1's checkpoint is written."""
    checkpoint = folder / "ck" / "last.npz"
    proc = ranks.start_launch(cli_args(data, folder, *CLI_FROZEN))
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    return proc, checkpoint


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds ranks through /proc")
@pytest.mark.parametrize("how", ["ctrl-c", "hang-up of rank 1"])
def test_ctrl_c_stops_every_rank_and_one_rank_resumes(shapes: Path, reference: Path, tmp_path: Path,
                                                      terminal_sigint, how: str) -> None:
    """Ctrl-C on the launcher (every local rank gets SIGINT), or a hang-up of rank 1 alone (what a
    rank started over ssh gets): every rank stops (130) at the same batch and rank 0 saves it; the
    run resumes on one process and ends with the weights of an uninterrupted one-process run."""
    proc, ck = launch_until_first_checkpoint(shapes, tmp_path)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
    else:
        os.kill(ranks.rank_pids(proc)[1], signal.SIGHUP)
    _, stderr = proc.communicate(timeout=60)
    assert "Node with rank 0 exited with code 130" in stderr and "Node with rank 1 exited with code 130" in stderr
    if how != "ctrl-c":  # the launcher lives on and relays rank 0's last line
        assert error_lines(stderr) == [f"error: interrupted; checkpoint saved to {ck}, continue with --resume"]
    meta = read_metadata(ck)  # saved between two batches, after the one the ranks agreed to stop at
    assert (meta["epoch"], meta["batch"]) > (1, 0) and not (tmp_path / "out.npz").exists()
    run_one(cli_args(shapes, tmp_path, "--resume", "--quiet"))
    assert_same_weights(tmp_path / "out.npz", reference)


def test_one_rank_stops_and_two_ranks_resume(shapes: Path, reference: Path, tmp_path: Path) -> None:
    run_one(cli_args(shapes, tmp_path, *CLI_FROZEN, "--stop-after-epochs", "1", "--quiet"))
    proc = ranks.launch(cli_args(shapes, tmp_path, "--resume", "--quiet"), 2, timeout=120)
    assert proc.returncode == 0 and "resuming" in proc.stdout and not error_lines(proc.stderr), proc.stderr
    assert_same_weights(tmp_path / "out.npz", reference)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds ranks through /proc")
def test_killed_rank_stops_training_and_the_rerun_finishes(shapes: Path, reference: Path, tmp_path: Path) -> None:
    """kill -9 of rank 1 mid-run: within a minute every rank has stopped, with one line naming
    rank 1 and how to continue; the checkpoint stays whole, no weights file is written, and the
    rerun with --resume finishes with one process's weights."""
    proc, ck = launch_until_first_checkpoint(shapes, tmp_path)
    line = ranks.kill_rank(proc)
    assert line.endswith(f"continue with: python train_dream.py --data {shapes} --resume {ck}")
    assert not (tmp_path / "out.npz").exists()
    assert sorted(p.name for p in ck.parent.iterdir()) == ["last.npz"] and read_metadata(ck)["epoch"] >= 1
    run_one(cli_args(shapes, tmp_path, "--resume", "--quiet"))
    assert_same_weights(tmp_path / "out.npz", reference)

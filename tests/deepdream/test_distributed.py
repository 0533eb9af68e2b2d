"""deepdream/distributed.py: the launcher's environment, threads per rank, the one-process path,
the collectives on two ranks, and the watchdog: a killed, frozen or failing rank stops every
rank within a minute with one line naming it.

Two-rank jobs run on localhost with the ring backend (tests/ranks.py), under ``mlx.launch`` or,
where the test is about our watchdog rather than the launcher's own reaction, started by hand.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import mlx.core as mx
import pytest

from deepdream import distributed as dist
from tests import ranks

WORKER = str(Path(__file__).resolve().parent / "distributed_worker.py")
needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds ranks through /proc")


def ring_env(tmp_path: Path, hosts: list[list[str]], rank: int) -> dict[str, str]:
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps(hosts))
    return {"MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile)}


def test_launch_env_reads_every_launcher(tmp_path: Path) -> None:
    hosts = [["10.0.0.1:5000"], ["10.0.0.1:5001"], ["10.0.0.2:5002"]]
    launch = dist.launch_env(ring_env(tmp_path, hosts, 1))
    assert launch == dist.Launch("ring", 1, 3, 2, ("10.0.0.1",))
    assert dist.launch_env(ring_env(tmp_path, hosts, 2)).ranks_on_host == 1
    # mlx.launch -n 1 writes an empty hostfile: one process.
    empty = tmp_path / "empty.json"
    empty.write_text("\n")
    assert dist.launch_env({"MLX_RANK": "0", "MLX_HOSTFILE": str(empty)}) is None
    assert dist.launch_env({"MLX_RANK": "3", "MLX_WORLD_SIZE": "4", "NCCL_HOST_IP": "10.0.0.9"}) == \
        dist.Launch("nccl", 3, 4, 1, ("10.0.0.9",))
    assert dist.launch_env({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "8",
                            "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}) == dist.Launch("mpi", 1, 8, 4, ())
    assert dist.launch_env({"PMI_RANK": "0", "PMI_SIZE": "2", "MPI_LOCALNRANKS": "2"}).ranks_on_host == 2
    devices = tmp_path / "ibv.json"
    devices.write_text(json.dumps([[None, "rdma_en2"], ["rdma_en2", None]]))
    assert dist.launch_env({"MLX_RANK": "1", "MLX_IBV_DEVICES": str(devices),
                            "MLX_JACCL_COORDINATOR": "10.0.0.1:32323"}) == dist.Launch("jaccl", 1, 2, 1, ("10.0.0.1",))
    assert dist.launch_env({}) is None


def test_threads_per_rank(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(dist, "host_cores", lambda: 16)
    monkeypatch.setattr(dist, "rank_threads", None)
    local = [["127.0.0.1:5000"], ["127.0.0.1:5001"], ["127.0.0.1:5002"], ["127.0.0.1:5003"]]
    env = ring_env(tmp_path, local, 2)
    assert dist.set_rank_threads(env) == 4
    assert all(env[v] == "4" for v in dist.THREAD_VARS)
    # The user's own setting wins, and one process (or one rank per host) is left alone.
    user = {**ring_env(tmp_path, local, 2), "OMP_NUM_THREADS": "3"}
    assert dist.set_rank_threads(user) is None and "MKL_NUM_THREADS" not in user
    spread = ring_env(tmp_path, [["10.0.0.1:5000"], ["10.0.0.2:5000"]], 0)
    assert dist.set_rank_threads(spread) is None and "MKL_NUM_THREADS" not in spread
    assert dist.set_rank_threads({}) is None


def test_one_process_is_the_plain_path() -> None:
    assert (dist.size(), dist.rank(), dist.is_main()) == (1, 0, True)
    x = mx.array([1.0, 2.0])
    assert dist.all_sum(x) is x and dist.all_gather(x) is x
    assert dist.broadcast_json({"a": 1}) == {"a": 1} and dist.gather_json(5) == [5]
    assert dist.broadcast_bytes(b"xy") == b"xy" and dist.any_rank(True) and not dist.any_rank(False)
    assert dist.part(10) == slice(0, 10) and dist.describe().startswith("1 process, ")
    threads = threading.active_count()
    with dist.session("unused") as watch:
        assert watch is None and threading.active_count() == threads  # no watchdog, no socket
    dist.check_same({"x": "1"}, "unused")


def test_part_shares_items_evenly() -> None:
    shares = [dist.part(10, r, 3) for r in range(3)]
    assert [(s.start, s.stop) for s in shares] == [(0, 3), (3, 6), (6, 10)]
    assert sum(s.stop - s.start for s in (dist.part(2, r, 4) for r in range(4))) == 2


def test_collectives_on_two_ranks(tmp_path: Path) -> None:
    proc = ranks.launch([WORKER, "collectives", str(tmp_path)], timeout=60)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.count("printed once") == 1  # print0: rank 0 alone
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    threads = str(max(1, dist.host_cores() // 2))
    for r, g in enumerate(got):
        assert g["size"] == 2 and g["describe"] == f"2 ranks (ring), {threads} thread{'s' * (threads != '1')} each"
        assert g["threads"] == threads  # the host's cores shared by its two ranks
        assert g["json"] == {"from": 0} and g["arrays"] == [[[1.0] * 3] * 2, [0, 1, 2, 3]]
        assert g["gathered"] == [{"r": 0, "pad": ""}, {"r": 1, "pad": "x"}]
        assert g["sum"] == 3.0 and g["any"] == [True, False]
    assert got[0]["part"] == [0, 3] and got[1]["part"] == [3, 7]


def _ready(folder: Path, n: int = 2, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not all((folder / f"ready{r}").exists() for r in range(n)):
        assert time.monotonic() < deadline, "ranks did not start"
        time.sleep(0.05)
    time.sleep(0.5)  # inside the all_sum loop


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("victim", [1, 0])
def test_killed_rank_stops_the_others_with_one_line(tmp_path: Path, victim: int) -> None:
    """SIGKILL one rank of a job started by hand (no launcher to stop the rest): the survivor
    stops within a minute; its one line names the dead rank; no traceback."""
    procs = ranks.start_by_hand([WORKER, "loop", str(tmp_path)], tmp_path)
    try:
        _ready(tmp_path)
        started = time.monotonic()
        procs[victim].kill()
        survivor = procs[1 - victim]
        _, stderr = survivor.communicate(timeout=60)
        assert time.monotonic() - started < 60
        assert survivor.returncode == 1 and "Traceback" not in stderr, stderr
        lines = _error_lines(stderr)
        assert len(lines) == 1 and lines[0].startswith(f"error: rank {victim} (host 127.0.0.1) ended without "
                                                       "finishing"), stderr
        assert lines[0].endswith("every rank stopped. rerun to finish")
    finally:
        for p in procs:
            p.kill()
            p.communicate()


def test_frozen_rank_is_named_within_a_minute(tmp_path: Path) -> None:
    """A rank that stops answering (SIGSTOP: a hung host) blocks the others' all_sum forever;
    the heartbeat notices and rank 0 stops with one line naming it."""
    procs = ranks.start_by_hand([WORKER, "loop", str(tmp_path)], tmp_path)
    try:
        _ready(tmp_path)
        started = time.monotonic()
        procs[1].send_signal(signal.SIGSTOP)
        _, stderr = procs[0].communicate(timeout=60)
        assert time.monotonic() - started < 60
        lines = _error_lines(stderr)
        assert procs[0].returncode == 1 and len(lines) == 1, stderr
        assert lines[0].startswith("error: rank 1 (host 127.0.0.1) stopped responding (30 s without a heartbeat")
    finally:
        procs[1].send_signal(signal.SIGCONT)
        for p in procs:
            p.kill()
            p.communicate()


@pytest.mark.parametrize(("mode", "line"), [
    ("fail1", "error: rank 1: cannot read photo.png (truncated); replace the file"),
    ("fail_all", "error: --steps must be at least 1 (got 0)"),
])
def test_a_rank_error_is_one_line_from_rank_0(tmp_path: Path, mode: str, line: str) -> None:
    """A rank's own error is printed once, by rank 0, naming the rank; a mistake every rank makes
    reads as one process's error. Every rank exits non-zero."""
    proc = ranks.launch([WORKER, mode, str(tmp_path)], timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert _error_lines(proc.stderr) == [line], proc.stderr
    assert "Node with rank 0 exited with code 1" in proc.stderr and "Node with rank 1 exited with code 1" in proc.stderr

"""bench.py --quick runs end to end and prints its tables; bad input is a one-line error."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench(*args: str, weights_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEEPDREAM_WEIGHTS_DIR": str(weights_dir)}
    return subprocess.run([sys.executable, str(ROOT / "bench.py"), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


def _three_digits(x: float) -> float:
    """Half a unit in the third significant digit: how far a number printed with ``:.3g`` may be off."""
    return 0.5 * 10 ** (math.floor(math.log10(abs(x))) - 2)


def _quotient_of_printed(quotient: float, numerator: float, numerator_step: float, denominator: float,
                         denominator_step: float = 0.5) -> bool:
    """Whether a printed quotient (two decimals or two significant digits) fits the printed numbers
    it was computed from before they were rounded, each by up to its step (whole milliseconds by
    default: at the tiny --quick sizes a step reads a few ms, so that rounding alone moves the
    quotient by several per cent)."""
    lo = (numerator - numerator_step) / (denominator + denominator_step)
    hi = (numerator + numerator_step) / max(denominator - denominator_step, 1e-9)
    return lo - 0.006 <= quotient <= hi + 0.006


def test_quick_prints_the_tables(weights_dir: Path) -> None:
    result = _bench("--quick", weights_dir=weights_dir)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # the header names the machine, the BLAS and the two rates the limits are computed from
    assert re.search(r"MLX sgemm \(2048\^3, in a process without torch\): \d+ GFLOP/s", out)
    assert re.search(r"memory bandwidth \(STREAM triad, torch, \d+ threads\): [\d.]+ GB/s", out)
    assert "timing: each side in a worker process of its own" in out
    assert "BLAS:" in out and "load average" in out
    # one dream-step row for googlenet at 64 px, with numbers in every column
    row = next(line for line in out.splitlines() if line.startswith("| googlenet | inception4c | 64 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    ours_ms, torch_ms, ratio = float(cells[3]), float(cells[4]), float(cells[5].strip("*"))
    assert ours_ms > 0 and torch_ms > 0
    assert _quotient_of_printed(ratio, ours_ms, 0.5, torch_ms)
    # the limits: FLOPs and bytes of the step, their times at the machine's rates, each side's share
    flops, flop_limit, share, torch_share = float(cells[6]), float(cells[7]), float(cells[8].strip("*")), float(cells[9])
    assert flops > 0 and share > 0 and torch_share > 0
    # a share is the limit over the time
    assert _quotient_of_printed(share, flop_limit, _three_digits(flop_limit), ours_ms)
    gigabytes, byte_limit, byte_share = float(cells[10]), float(cells[11]), float(cells[12].strip("*"))
    assert gigabytes > 0 and byte_share > 0
    assert _quotient_of_printed(byte_share, byte_limit, _three_digits(byte_limit), ours_ms)
    # the roofline (each operation at the rate that binds it) is no lower than either limit alone
    roofline, roof_share = float(cells[14]), float(cells[15].strip("*"))
    assert roofline >= 0.99 * max(flop_limit, byte_limit)
    assert _quotient_of_printed(roof_share, roofline, _three_digits(roofline), ours_ms)
    assert float(cells[17]) < 0.1                   # both sides computed the same step (a wrong one: ~1)
    # the end-to-end recipe
    assert re.search(r"\| googlenet preset \(inception3a, inception4e, inception5b\) \| 128x\d+ \| \d \| 2 \|", out)
    # the memory table: measured peak (prediction; tiles) per photo size, the default flags' output size
    memory = next(line for line in out.splitlines() if line.startswith("| googlenet | 0.") and "whole" in line)
    measured = [float(m) for m in re.findall(r"\| ([\d.]+) \(", memory)]
    assert len(measured) == 2 and all(0.05 < m < 4 for m in measured) and "output" not in memory
    # the prediction next to the measurement (1200x900 needs a profile; 400x300 fits without one)
    row = next(line for line in out.splitlines() if line.startswith("| googlenet | 1200x900 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    predicted, measured_gib = float(cells[2]), float(cells[3])
    assert abs(predicted / measured_gib - 1) < 0.25
    # tiled against whole steps, per megapixel
    row = next(line for line in out.splitlines() if line.startswith("| googlenet | 640x480 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[2]) > 0 and float(cells[3]) > 0 and re.fullmatch(r"\d+ of \d+x\d+", cells[4])
    assert int(cells[4].split()[0]) > 1


def test_unknown_model_is_a_one_line_error(weights_dir: Path) -> None:
    result = _bench("--models", "googlenett", "--no-e2e", "--no-memory", weights_dir=weights_dir)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown model 'googlenett'")
    assert "googlenet" in lines[0] and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_bad_numbers_are_rejected(weights_dir: Path) -> None:
    for args in (["--sizes", "0"], ["--repeats", "x"], ["--memory-sizes", "4000by3000"], ["--max-memory", "lots"]):
        result = _bench(*args, weights_dir=weights_dir)
        assert result.returncode == 2, args
        assert "Traceback" not in result.stderr and "error:" in result.stderr


def test_memory_child_reports_its_own_peak_not_its_parents() -> None:
    # Linux hands a child the parent's RSS high-water mark across fork + exec (so wait4's
    # ru_maxrss of a child started by a big benchmark process is at least the parent's size).
    import numpy as np

    ballast = np.ones(1 << 27)  # 1 GiB, touched
    code = "from benchmarks.measure import own_peak_rss_bytes; print(own_peak_rss_bytes())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    peak = int(result.stdout.strip())
    assert 5 * 2 ** 20 < peak < 512 * 2 ** 20, peak   # a bare interpreter, not the 1 GiB parent
    assert ballast.sum() == ballast.size


def test_same_process_mode_and_span_clock_say_so(weights_dir: Path) -> None:
    result = _bench("--quick", "--same-process", "--no-e2e", "--no-memory", "--no-tiling", "--clock", "span",
                    weights_dir=weights_dir)
    assert result.returncode == 0, result.stderr
    assert "timing: both sides in the benchmark's own process (--same-process)" in result.stdout
    assert "CPU seconds of each process's busiest thread, idle threads asleep (--clock span)" in result.stdout
    assert re.search(r"^\| googlenet \| inception4c \| 64 \| \d+ \| \d+ \|", result.stdout, re.M)


def test_profile_prints_each_stage_beside_its_roofline(weights_dir: Path) -> None:
    result = _bench("--profile", "googlenet", "--sizes", "64", "--repeats", "1", "--warmup", "0",
                    weights_dir=weights_dir)
    assert result.returncode == 0, result.stderr
    assert "### googlenet, 64 px: forward + input gradient up to each stage" in result.stdout
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in result.stdout.splitlines()
            if re.match(r"\| (conv|maxpool|inception)", line)]
    assert [r[0] for r in rows[:3]] == ["conv1", "maxpool1", "conv2"] and rows[-1][0] == "inception4c"
    rooflines = [float(r[6]) for r in rows]
    # a later stage runs every earlier one too; the stage's own roofline is the difference
    assert all(b >= a for a, b in zip(rooflines, rooflines[1:])) and rooflines[0] > 0
    for before, r in zip([0.0, *rooflines], rows):
        assert float(r[3]) == pytest.approx(float(r[6]) - before, abs=0.016)     # three numbers to 0.01 ms
        # the share is the roofline over our cumulative time
        assert _quotient_of_printed(float(r[8]), float(r[6]), 0.005, float(r[4]), 0.05)


def test_side_workers_time_their_own_step_and_report_failures(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import bench
    from benchmarks.isolated import SideWorker, WorkerError, alternating_times
    from benchmarks.pairs import build_pair

    pair = build_pair("alexnet", tmp_path)
    specs = bench.worker_specs(pair, ["relu2"], tmp_path, threads=1, clock="cpu")
    assert specs["torch"]["modules"] == {"relu2": "features.4"}    # found again by name in the worker
    workers = [SideWorker(side, spec) for side, spec in specs.items()]
    try:
        times = alternating_times(workers, size=67, warmup=1, repeats=2)
        assert set(times) == {"ours", "torch"}
        assert all(len(v) == 2 and all(t > 0 for t in v) for v in times.values())
        with pytest.raises(WorkerError, match="unknown command 'fly'"):
            workers[0].ask("fly")
        assert workers[0].ask("step")["seconds"] > 0               # still serving after a bad command
    finally:
        for worker in workers:
            worker.close()
    broken = {**specs["ours"], "weights": str(tmp_path / "missing.npz")}
    with SideWorker("ours", broken) as worker, pytest.raises(WorkerError, match="missing.npz"):
        worker.ask("prepare", size=67, warmup=0)


def test_the_timed_step_uses_the_engine_s_first_smoothing_sigma() -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.isolated import STEP_ARGS
    from deepdream.transforms import smoothing_sigma

    assert STEP_ARGS[1] == pytest.approx(smoothing_sigma(0, 10, 0.5))


def test_only_span_timed_workers_keep_the_span_clock_s_sleeping_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    # bench.py --clock span sets SPAN_ENV for every process; a worker timed by elapsed time (the
    # end-to-end dream) must wait for work as a user's process does, or every short parallel
    # region pays a thread's wake-up.
    sys.path.insert(0, str(ROOT))
    from benchmarks.isolated import worker_environment
    from benchmarks.measure import SPAN_ENV

    for key, value in SPAN_ENV.items():
        monkeypatch.setenv(key, value)
    span = worker_environment({"clock": "span"})
    assert all(span[key] == value for key, value in SPAN_ENV.items())
    wall = worker_environment({"clock": "wall"})
    assert not set(SPAN_ENV) & set(wall)
    assert wall["PYTHONPATH"] == str(ROOT) and wall["PATH"] == os.environ["PATH"]
    monkeypatch.setenv("KMP_BLOCKTIME", "50")            # the user's own setting stays
    assert worker_environment({"clock": "wall"})["KMP_BLOCKTIME"] == "50"


def test_the_end_to_end_dream_is_timed_by_elapsed_time_under_any_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(ROOT))
    import bench
    import benchmarks.isolated as isolated

    started: dict[str, dict] = {}

    class FakeWorker:
        def __init__(self, side: str, spec: dict) -> None:
            started[side] = spec

        def __enter__(self) -> FakeWorker:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def ask(self, op: str, **fields: object) -> dict:
            return {"seconds": 1.0, "sizes": [[64, 96]]}

    monkeypatch.setattr(isolated, "SideWorker", FakeWorker)
    specs = lambda layers: {side: {"clock": "span", "layers": layers} for side in ("ours", "torch")}  # noqa: E731
    result = bench.time_end_to_end(96, 2, specs, same_process=False)
    assert {side: spec["clock"] for side, spec in started.items()} == {"ours": "wall", "torch": "wall"}
    assert result.ours_s == result.torch_s == 1.0

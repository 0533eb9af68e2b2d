"""benchmarks.measure: the span clock reads the busiest thread's CPU time, not the waiting; a step's cost
counts each operation, and its roofline binds each by the rate it is slowest at."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.measure import TIMERS, step_cost  # noqa: E402


def _busy(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="the span clock reads Linux's per-thread times")
def test_span_counts_the_busiest_thread_and_not_waiting() -> None:
    assert TIMERS["span"](lambda: time.sleep(0.3)) < 0.1       # waiting is not work
    assert TIMERS["wall"](lambda: time.sleep(0.3)) >= 0.3

    def two_threads() -> None:           # 0.3 s of work on one thread, 0.1 s on another
        helper = threading.Thread(target=_busy, args=(0.1,))
        helper.start()
        _busy(0.3)
        helper.join()

    span, cpu = TIMERS["span"](two_threads), TIMERS["cpu"](two_threads)
    assert 0.28 < span < 0.4 and cpu > span + 0.05


def test_step_cost_counts_each_operation_and_its_roofline() -> None:
    torch = pytest.importorskip("torch")
    # A wide 1x1 product (many FLOPs per byte) and then a depthwise 3x3 (few): one bound by each rate.
    wide = torch.randn(256, 64, 1, 1)
    depthwise = torch.randn(256, 1, 3, 3)

    def loss(x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.conv2d(x, wide)
        return torch.nn.functional.conv2d(y, depthwise, padding=1, groups=256).square().mean()

    cost = step_cost(loss, torch.randn(1, 64, 32, 32))
    # two forwards and two input gradients, each with the FLOPs torch counts (2 per multiply-add)
    assert len(cost.operations) == 4
    pixels = 32 * 32
    per_layer = sorted([2 * pixels * 64 * 256, 2 * pixels * 256 * 9] * 2)
    assert sorted(f for f, _ in cost.operations) == per_layer
    assert sum(f for f, _ in cost.operations) == cost.flops
    assert sum(b for _, b in cost.operations) == cost.bytes
    # the 1x1 forward reads x and the weight and writes its output, once each (float32)
    assert (2 * pixels * 64 * 256, 4.0 * (pixels * 64 + 256 * 64 + pixels * 256)) in cost.operations
    # where the rates make one operation compute-bound and the other memory-bound, the roofline
    # exceeds both whole-step limits; with either rate unbounded it is the other limit
    gflops, gbps = 100.0, 10.0
    roofline = cost.roofline_s(gflops, gbps)
    assert roofline > max(cost.flop_limit_s(gflops), cost.byte_limit_s(gbps))
    assert roofline < cost.flop_limit_s(gflops) + cost.byte_limit_s(gbps)
    assert cost.roofline_s(gflops, 1e12) == pytest.approx(cost.flop_limit_s(gflops))
    assert cost.roofline_s(1e12, gbps) == pytest.approx(cost.byte_limit_s(gbps))

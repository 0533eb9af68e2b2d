"""benchmarks.measure's timers: the span clock reads the busiest thread's CPU time, not the waiting."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.measure import TIMERS  # noqa: E402


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

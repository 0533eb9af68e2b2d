"""Progress bars' timing: an ETA from the steps that predict the rest, and a word while the first one compiles."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from tqdm import tqdm

#: Seconds a first step may take before the bar says why it has not moved.
SLOW_FIRST_STEP_S = 3.0
SLOW_FIRST_STEP = ("deepdream: the first step compiles the dream; on a new machine MLX also builds its kernels "
                   "(once, up to a minute; cached)")


class StepCounter:
    """Counts a loop's steps on ``bar``. The first step also traces and compiles the step (and on a
    fresh machine MLX builds its kernels): its time says nothing about the others', so it is
    counted without its time, and when it is slow a line above the bar says why nothing moves."""

    def __init__(self, bar: tqdm) -> None:
        self.bar = bar
        self.first = True

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        if not self.first:
            yield
            self.bar.update(1)
            return
        self.first = False
        timer = None
        if not self.bar.disable:     # tqdm.write: the line goes above the bar, which is redrawn below it
            timer = threading.Timer(SLOW_FIRST_STEP_S, tqdm.write, (SLOW_FIRST_STEP,), {"file": self.bar.fp})
            timer.daemon = True
            timer.start()
        try:
            yield
        finally:
            if timer is not None:
                timer.cancel()
        count_untimed(self.bar)


def count_untimed(bar: tqdm, steps: int = 1) -> None:
    """Count ``steps`` more as done on ``bar`` without their time: the rate and the ETA then come
    from the steps after them alone."""
    done = bar.n + steps
    bar.reset()                                   # its clock and rate averages start now
    bar.n = bar.last_print_n = bar.initial = done
    bar.refresh()

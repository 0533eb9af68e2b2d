"""Progress bars' timing: an ETA from the steps that predict the rest."""

from __future__ import annotations

from tqdm import tqdm


def count_untimed(bar: tqdm, steps: int = 1) -> None:
    """Count ``steps`` more as done on ``bar`` without their time: the rate and the ETA then come
    from the steps after them alone. For a first step, which also traces and compiles the step
    (and on a fresh machine builds MLX's kernels): its time says nothing about the others'."""
    done = bar.n + steps
    bar.reset()                                   # its clock and rate averages start now
    bar.n = bar.last_print_n = bar.initial = done
    bar.refresh()

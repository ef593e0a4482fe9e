"""How long a refinement runs: a number of passes, or a wall-clock budget in seconds.

Both engines' ``refine`` take either. With passes, the learning-rate schedule runs over them;
with seconds, it runs over the time and the refinement stops when the time is spent, between
two optimiser steps, so a budget is kept to about one step's time whatever a pass costs (a
number of passes extrapolated from the first one missed budgets by up to 30 %: later passes
differ from the first, and whole passes do not divide the time).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator

__all__ = ["PassBudget"]


class PassBudget:
    """``epochs`` passes, or passes until ``seconds`` of wall time (from construction) are spent.

    Exactly one is given. :meth:`passes` yields pass indices from 0; :attr:`spent` turns True
    once the time is up (never for a count of passes), and the engines check it after every
    step; :meth:`progress` is where the schedule stands, from 0 to 1.
    """

    def __init__(self, epochs: int | None = None, seconds: float | None = None):
        if (epochs is None) == (seconds is None):
            raise ValueError("give exactly one of epochs and seconds")
        if epochs is not None and epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        if seconds is not None and not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds}")
        self.epochs = epochs
        self.seconds = seconds
        self._start = time.perf_counter()

    def passes(self) -> Iterator[int]:
        """Pass indices: ``range(epochs)``, or as many as start before the time is spent."""
        if self.epochs is not None:
            yield from range(self.epochs)
            return
        for epoch in itertools.count():
            if self.spent:
                return
            yield epoch

    @property
    def spent(self) -> bool:
        """True once the seconds are spent (always False for a count of passes)."""
        return self.seconds is not None and self.elapsed_s >= self.seconds

    @property
    def elapsed_s(self) -> float:
        """Seconds since the budget was made."""
        return time.perf_counter() - self._start

    def progress(self, epoch: int) -> float:
        """Where the schedule stands in [0, 1]: pass ``epoch`` of ``epochs - 1``, or the
        fraction of the seconds spent."""
        if self.epochs is not None:
            return epoch / max(self.epochs - 1, 1)
        return min(1.0, self.elapsed_s / self.seconds) if self.seconds else 1.0

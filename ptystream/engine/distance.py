"""Finding the propagation distance of a near-field scan by search, not by gradient alone.

Joint gradient descent on (object, probe, z) sticks near its starting z: the object and probe
soak up the error (from 18.5 mm, truth 3.5 mm, Adam on z ended at 18.3 mm whatever the rate;
benchmarks/README.md). Yet the data fix z: the loss reached after a few dozen passes at a fixed z
is smooth in z with its minimum at the truth. So each trial z is scored by that loss, from the
same starting state and the same batch order, and the best is found by a grid then a bounded
Brent search (scipy).

With the probe known, the gradient can find z too, coarse to fine
(``EngineSettings.distance_blur_px``); the search works whether or not the probe is known.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import numpy as np
from scipy.optimize import minimize_scalar

from ptystream.engine.checkpoint import EngineState
from ptystream.types import NEAR_FIELD, Geometry

__all__ = ["DistanceModel", "grid_then_brent", "search_distance"]

logger = logging.getLogger(__name__)

#: Trial distances on the first, coarse grid.
GRID_POINTS = 6
#: Brent evaluations within the best grid cell and its neighbour.
REFINE_EVALUATIONS = 8


class DistanceModel(Protocol):
    """What the search needs of a near-field engine (the AD engine has it all)."""

    geometry: Geometry
    hold_distance: bool
    distance_m: float

    @property
    def n_frames(self) -> int: ...

    @property
    def distance_range_m(self) -> tuple[float, float]: ...

    def snapshot(self) -> EngineState: ...

    def restore(self, state: EngineState) -> None: ...

    def restart_probe(self, distance_m: float) -> None: ...

    def refine(
        self, epochs: int, on_epoch: Callable[[int, float], None] | None = None
    ) -> float: ...


def search_distance(
    engine: DistanceModel, lo_m: float, hi_m: float, passes: int = 25
) -> tuple[float, dict[float, float]]:
    """Set ``engine``'s distance to the one in ``[lo_m, hi_m]`` (clipped to the model's valid
    range) whose trial ends at the lowest loss; restore everything else.

    Each trial starts from the engine's current state with the initial probe rebuilt for its z
    (``engine.restart_probe``), holds z fixed, runs ``passes`` passes
    (the learning-rate schedule of ``engine.refine``) and scores the mean loss of its last
    three. Returns the best distance and ``{distance_m: score}`` for every trial.
    """
    if engine.geometry.propagation != NEAR_FIELD:
        raise ValueError("a distance search needs a near-field geometry")
    if engine.n_frames == 0:
        raise ValueError("a distance search needs frames")
    z_min, z_max = engine.distance_range_m
    lo, hi = max(lo_m, z_min), min(hi_m, z_max)
    if not lo < hi:
        raise ValueError(
            f"distance search range [{lo_m}, {hi_m}] m is outside the valid range "
            f"({z_min:.3g}, {z_max:.3g}] m of the angular spectrum"
        )
    start = engine.snapshot()
    trials: dict[float, float] = {}

    def score(z: float) -> float:
        engine.restore(start)
        engine.distance_m = z
        engine.restart_probe(z)  # the measured beam propagated back over the trial distance
        losses: list[float] = []
        engine.refine(passes, on_epoch=lambda _, loss: losses.append(loss))
        trials[float(engine.distance_m)] = value = float(np.mean(losses[-3:]))
        logger.info("distance %.4g m: loss %.4g", z, value)
        return value

    engine.hold_distance = True
    try:
        grid_then_brent(score, np.linspace(lo, hi, GRID_POINTS), REFINE_EVALUATIONS)
    finally:
        engine.hold_distance = False
    z_best = min(trials, key=trials.__getitem__)
    engine.restore(start)
    engine.distance_m = z_best
    engine.restart_probe(z_best)
    return z_best, trials


def grid_then_brent(score: Callable[[float], float], grid: np.ndarray, evaluations: int) -> None:
    """Minimise a scalar function by calling ``score`` on every point of the ascending ``grid``,
    then up to ``evaluations`` times more by a bounded Brent search (scipy) between the grid
    neighbours of its best point. ``score`` keeps its own record of what it was called with."""
    best = int(np.argmin([score(float(x)) for x in grid]))
    bounds = (grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)])
    minimize_scalar(
        score,
        bounds=bounds,
        method="bounded",
        options={"maxiter": evaluations, "xatol": 1e-4 * (grid[-1] - grid[0])},
    )

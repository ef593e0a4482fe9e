"""Scan trajectories: probe positions ``(n, 2)`` as ``(y, x)`` in metres, centred on (0, 0).

The spacing comes from the linear overlap of neighbouring probe footprints,
``step = diameter * (1 - overlap)``.
"""

from __future__ import annotations

import numpy as np

from ptystream.config import TrajectoryKind

__all__ = [
    "concentric_rings",
    "fermat_spiral",
    "jittered_raster",
    "step_from_overlap",
    "trajectory",
]

_GOLDEN_ANGLE = np.pi * (3.0 - np.sqrt(5.0))


def step_from_overlap(probe_diameter_m: float, overlap: float) -> float:
    """Distance between neighbouring positions for a linear overlap in [0, 1)."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return probe_diameter_m * (1.0 - overlap)


def fermat_spiral(n_points: int, step_m: float) -> np.ndarray:
    """Fermat spiral with golden-angle increments; mean neighbour distance about ``step_m``."""
    k = np.arange(n_points)
    r = step_m / np.sqrt(np.pi) * np.sqrt(k + 0.5)
    theta = k * _GOLDEN_ANGLE
    return np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1)


def concentric_rings(n_points: int, step_m: float) -> np.ndarray:
    """Rings spaced by ``step_m`` with points spaced about ``step_m`` along each ring."""
    pts = [(0.0, 0.0)]
    ring = 1
    while len(pts) < n_points:
        radius = ring * step_m
        count = max(6, int(round(2 * np.pi * radius / step_m)))
        angles = 2 * np.pi * np.arange(count) / count + 0.5 * ring
        pts.extend(zip(radius * np.sin(angles), radius * np.cos(angles), strict=True))
        ring += 1
    return np.asarray(pts[:n_points])


def jittered_raster(
    n_points: int, step_m: float, jitter_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """A near-square snake raster with uniform random errors of ``jitter_fraction * step``.

    Jitter breaks the raster grid's periodicity, which otherwise lets the probe absorb a
    periodic artefact of the object.
    """
    cols = int(np.ceil(np.sqrt(n_points)))
    rows = int(np.ceil(n_points / cols))
    pts = []
    for r in range(rows):
        order = range(cols) if r % 2 == 0 else range(cols - 1, -1, -1)
        pts.extend((r, c) for c in order)
    grid = (np.asarray(pts[:n_points], dtype=float) - [(rows - 1) / 2, (cols - 1) / 2]) * step_m
    return grid + rng.uniform(-1, 1, grid.shape) * jitter_fraction * step_m


def trajectory(
    kind: TrajectoryKind,
    n_points: int,
    step_m: float,
    *,
    jitter_fraction: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Dispatch on ``kind``; ``rng`` is needed only for the raster's jitter."""
    if kind is TrajectoryKind.FERMAT:
        return fermat_spiral(n_points, step_m)
    if kind is TrajectoryKind.RINGS:
        return concentric_rings(n_points, step_m)
    if rng is None:
        raise ValueError("a jittered raster needs a random generator")
    return jittered_raster(n_points, step_m, jitter_fraction, rng)

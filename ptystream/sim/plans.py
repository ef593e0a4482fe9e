"""Bluesky plans for ptychography scans."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import numpy as np
from bluesky import Msg
from bluesky import plan_stubs as bps
from bluesky import plans as bp
from bluesky import preprocessors as bpp

from ptystream.sim.devices import PtychoDetector, SampleStage

__all__ = ["ptycho_scan", "scan_metadata"]


def scan_metadata(positions_m: np.ndarray, profile: str) -> dict[str, Any]:
    """The ``ptystream`` block of the start document: what the reconstruction needs up front.

    ``extent_m`` is ``[[y_min, y_max], [x_min, x_max]]`` of the planned probe positions in metres.
    """
    pos = np.asarray(positions_m, dtype=float)
    return {
        "profile": profile,
        "n_points": int(len(pos)),
        "extent_m": [
            [float(pos[:, 0].min()), float(pos[:, 0].max())],
            [float(pos[:, 1].min()), float(pos[:, 1].max())],
        ],
    }


def ptycho_scan(
    detector: PtychoDetector,
    stage: SampleStage,
    positions_m: np.ndarray,
    *,
    profile: str,
    motor_units_m: float,
    md: dict[str, Any] | None = None,
    dark_frames: int = 0,
) -> Generator[Any, Any, str]:
    """Move ``stage`` through ``positions_m`` ((n, 2), y and x in metres) and take a frame at each.

    The start document carries ``ptystream`` = :func:`scan_metadata`, so a live reconstruction
    can size its canvas and buffers before the first frame. ``dark_frames``: that many frames
    with the shutter closed first, in the run's ``dark`` stream (``preprocess.dark_stream``).
    """
    pos = np.asarray(positions_m, dtype=float)
    if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) == 0:
        raise ValueError(f"positions_m must be (n, 2) with n > 0, got shape {pos.shape}")
    meta = {"plan_name": "ptycho_scan", "ptystream": scan_metadata(pos, profile), **(md or {})}
    ys, xs = pos[:, 0] / motor_units_m, pos[:, 1] / motor_units_m
    scan = bp.list_scan([detector], stage.y, list(ys), stage.x, list(xs), md=meta)
    if dark_frames:
        scan = bpp.plan_mutator(scan, _after_open(_darks(detector, dark_frames)))
    return (yield from scan)


def _darks(detector: PtychoDetector, n: int) -> Generator[Any, Any, None]:
    yield from bps.mv(detector.shutter, "closed")
    for _ in range(n):
        yield from bps.trigger_and_read([detector], name="dark")
    yield from bps.mv(detector.shutter, "open")


def _after_open(plan: Generator[Any, Any, None]) -> Callable[[Msg], tuple[Any, None]]:
    """A ``plan_mutator`` function that runs ``plan`` right after the run opens."""

    def insert(msg: Msg) -> tuple[Any, None]:
        if msg.command != "open_run":
            return None, None

        def head():
            result = yield msg
            yield from plan
            return result

        return head(), None

    return insert

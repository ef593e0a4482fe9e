"""A simulated ptychography fly scan: frames as StreamDatum ranges, positions as one event page.

In a fly scan the detector runs free and the plan collects what it wrote; positions come from
a position array (a PandA or an encoder capture at a real beamline) rather than from reading
the motors at each point. Here :class:`PositionArrayFlyer` publishes the planned positions and
:class:`~ptystream.sim.async_detector.SimPtychoDetector` computes frame ``k`` at position ``k``
of the same array, so no stage moves.

Documents of :func:`fly_scan` (``n`` positions, frame key ``det_image``, N x N frames)::

    start        ptystream = scan_metadata(positions_m, profile), plan_name "fly_scan"
    descriptor   name=stream ("primary"): det_image {shape [1, N, N], dtype_numpy "<f4",
                 external "STREAM:"}
    descriptor   name=position_stream ("positions"): sy, sx {dtype number, shape [],
                 dtype_numpy "<f8", units "um"} (motor units)
    event_page   position_stream: n rows, seq_num 1..n, data {"sy": [...], "sx": [...]}
    stream_resource  data_key det_image, application/x-hdf5, dataset /entry/data/data
    stream_datum ...  indices {start, stop} ranges covering 0..n, seq_nums {start+1, stop+1}
                 (one datum {0, n} unless ``collect_every_s`` splits it)
    stop

Row ``k`` of the positions (seq_num ``k + 1``) is the position of the frame with seq_num
``k + 1`` (dataset index ``k``); both streams count seq_nums from 1. The positions are
published right after kickoff, before any frame, so a live consumer can pair each frame as
soon as its datum arrives.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from typing import Any

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from ophyd.status import Status
from ophyd_async.core import TriggerInfo

from ptystream.sim.async_detector import SimPtychoDetector
from ptystream.sim.plans import scan_metadata

__all__ = ["PositionArrayFlyer", "fly_scan"]


def _finished() -> Status:
    status = Status()
    status.set_finished()
    return status


class PositionArrayFlyer:
    """A bluesky flyer that publishes a fixed array of stage positions as one event page.

    Implements the ``Flyable`` and ``EventPageCollectable`` protocols (ophyd v1 statuses):
    ``kickoff``/``complete`` finish at once, ``describe_collect`` gives the two readback keys
    (singly nested, for ``declare_stream``), and ``collect_pages`` yields a single page of
    ``n`` rows. Positions are published in motor units (``positions_m / motor_units_m``), the
    same values a step scan's stage readbacks would have.
    """

    def __init__(
        self,
        positions_m: np.ndarray,
        *,
        motor_units_m: float,
        x_key: str = "sx",
        y_key: str = "sy",
        units: str = "um",
        name: str = "positions",
    ) -> None:
        self.name = name
        self.parent = None
        pos = np.asarray(positions_m, dtype=float) / motor_units_m
        self._columns = {y_key: pos[:, 0], x_key: pos[:, 1]}
        self._units = units

    def kickoff(self) -> Status:
        return _finished()

    def complete(self) -> Status:
        return _finished()

    def describe_collect(self) -> dict[str, dict[str, Any]]:
        return {
            key: {
                "source": f"sim:{self.name}",
                "dtype": "number",
                "dtype_numpy": "<f8",
                "shape": [],
                "units": self._units,
            }
            for key in self._columns
        }

    def collect_pages(self) -> Iterator[dict[str, Any]]:
        now = time.time()
        n = len(next(iter(self._columns.values())))
        yield {
            "data": {key: col.tolist() for key, col in self._columns.items()},
            "timestamps": {key: [now] * n for key in self._columns},
            "time": [now] * n,
        }


def fly_scan(
    detector: SimPtychoDetector,
    positions_m: np.ndarray,
    *,
    profile: str,
    motor_units_m: float,
    stream: str = "primary",
    position_stream: str = "positions",
    x_key: str = "sx",
    y_key: str = "sy",
    exposure_s: float = 0.0,
    collect_every_s: float | None = None,
    md: dict[str, Any] | None = None,
) -> Generator[Any, Any, str]:
    """Fly through ``positions_m`` ((n, 2), y and x in metres): n frames, one position page.

    Parameters
    ----------
    detector : writes frame ``k`` at ``positions_m[k]`` (through its ``fly_y_m``/``fly_x_m``
        signals, which this plan sets and empties again at the end).
    profile, motor_units_m : as :func:`ptystream.sim.plans.ptycho_scan`; the start document
        carries ``ptystream = scan_metadata(positions_m, profile)``.
    stream, position_stream : stream names of the frames and of the positions (a profile's
        ``instrument.stream`` and ``instrument.position_stream``); they must differ.
    x_key, y_key : data keys of the positions (a profile's ``x_motor``/``y_motor``).
    exposure_s : seconds per frame (the TriggerInfo livetime); 0 writes as fast as possible.
    collect_every_s : None collects all frames once, after the detector completes (one
        ``stream_datum`` for indices 0..n); a period in seconds collects while it runs, so
        ``stream_datum`` ranges arrive as frames are written.

    Returns the run's uid.
    """
    pos = np.asarray(positions_m, dtype=float)
    if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) == 0:
        raise ValueError(f"positions_m must be (n, 2) with n > 0, got shape {pos.shape}")
    if stream == position_stream:
        raise ValueError(f"frames and positions need different streams, both are {stream!r}")
    flyer = PositionArrayFlyer(pos, motor_units_m=motor_units_m, x_key=x_key, y_key=y_key)
    meta = {
        "plan_name": "fly_scan",
        "detectors": [detector.name],
        "num_points": len(pos),
        "ptystream": scan_metadata(pos, profile),
        **(md or {}),
    }
    empty = np.empty(0)

    def run() -> Generator[Any, Any, None]:
        yield from bps.mv(detector.fly_y_m, pos[:, 0], detector.fly_x_m, pos[:, 1])
        info = TriggerInfo(number_of_events=len(pos), livetime=exposure_s)
        yield from bps.prepare(detector, info, wait=True)
        yield from bps.declare_stream(detector, name=stream, collect=True)
        yield from bps.declare_stream(flyer, name=position_stream, collect=True)
        yield from bps.kickoff_all(detector, flyer, wait=True)
        yield from bps.complete(flyer, wait=True)
        yield from bps.collect(flyer, name=position_stream)
        yield from bps.collect_while_completing(
            [detector], [detector], flush_period=collect_every_s, stream_name=stream
        )

    def clear_trajectory() -> Generator[Any, Any, None]:
        yield from bps.mv(detector.fly_y_m, empty, detector.fly_x_m, empty)

    plan = bpp.run_wrapper(bpp.finalize_wrapper(run(), clear_trajectory()), md=meta)
    return (yield from bpp.stage_wrapper(plan, [detector]))

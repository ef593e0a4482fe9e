"""Bluesky documents to lightweight records, on the RunEngine's thread.

The callback parses documents and hands :mod:`ptystream.types` records to a :class:`RunSink`
(the pipeline), which must only enqueue them. It imports neither TensorFlow nor tiled, and it
never raises into the RunEngine: live reconstruction is not data saving, so an error is logged
(with the document that caused it) and the scan goes on.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from event_model import DocumentRouter, RunRouter

from ptystream.config import Profile
from ptystream.types import FrameRecord, RunStart, RunStop, ScanPlan

__all__ = ["PtychoCallback", "RunSink", "plan_from_start"]

logger = logging.getLogger(__name__)


class RunSink(Protocol):
    """Receives parsed records; every method must return at once (it runs on the RE thread)."""

    def open_run(self, start: RunStart) -> None: ...

    def submit(self, record: FrameRecord) -> None: ...

    def close_run(self, stop: RunStop) -> None: ...


def plan_from_start(block: dict[str, Any]) -> ScanPlan:
    """The :class:`ScanPlan` in a start document's ``ptystream`` block (missing keys are None).

    Raises ValueError naming the offending key when a value has the wrong form.
    """
    n_points = block.get("n_points")
    if n_points is not None and (not isinstance(n_points, int) or n_points <= 0):
        raise ValueError(f"ptystream.n_points must be a positive integer, got {n_points!r}")
    extent = block.get("extent_m")
    if extent is not None:
        try:
            (y0, y1), (x0, x1) = ((float(a), float(b)) for a, b in extent)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"ptystream.extent_m must be [[y_min, y_max], [x_min, x_max]], got {extent!r}"
            ) from exc
        if not (y0 <= y1 and x0 <= x1):
            raise ValueError(f"ptystream.extent_m has min > max: {extent!r}")
        extent = ((y0, y1), (x0, x1))
    return ScanPlan(n_points=n_points, extent_m=extent)


class _RunParser(DocumentRouter):
    """Per-run state: which descriptors carry frames and positions, and the run's uid."""

    def __init__(self, start: RunStart, profile: Profile, sink: RunSink):
        super().__init__()
        self._uid = start.run_uid
        self._sink = sink
        inst = profile.instrument
        self._stream = inst.stream
        self._frame_key = inst.detector_key
        self._motor_keys = (inst.y_motor, inst.x_motor)
        self._units_m = inst.motor_units_m
        self._descriptors: dict[str, tuple[bool, bool]] = {}
        sink.open_run(start)

    def descriptor(self, doc):
        if doc.get("name") != self._stream:
            return
        keys = doc.get("data_keys", {})
        has_frame = self._frame_key in keys
        has_position = all(k in keys for k in self._motor_keys)
        self._descriptors[doc["uid"]] = (has_frame, has_position)

    def event(self, doc):
        has_frame, has_position = self._descriptors.get(doc["descriptor"], (False, False))
        if not (has_frame or has_position):
            return
        data = doc["data"]
        position = None
        if has_position:
            y, x = (data[k] for k in self._motor_keys)
            position = (float(y) * self._units_m, float(x) * self._units_m)
        self._sink.submit(
            FrameRecord(
                run_uid=self._uid,
                seq_num=int(doc["seq_num"]),
                frame=data[self._frame_key] if has_frame else None,
                position_m=position,
            )
        )

    def stop(self, doc):
        self._sink.close_run(
            RunStop(
                run_uid=self._uid,
                exit_status=str(doc.get("exit_status", "success")),
                reason=str(doc.get("reason", "")),
            )
        )


class PtychoCallback:
    """A ``callback(name, doc)`` that routes each run's documents to a fresh parser.

    Runs whose start document has no ``ptystream`` block, or names another profile, are skipped
    with one log line.

    Parameters
    ----------
    profile : the profile this process reconstructs with.
    sink : where records go (the pipeline); its methods must not block.
    raise_errors : re-raise instead of logging (for tests and debugging only; never at a
        beamline, where an exception would reach the RunEngine).
    """

    def __init__(self, profile: Profile, sink: RunSink, *, raise_errors: bool = False):
        self._profile = profile
        self._sink = sink
        self._raise = raise_errors
        self._router = RunRouter([self._factory])

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        try:
            self._router(name, doc)
        except Exception:
            if self._raise:
                raise
            logger.exception("ptystream ignored a %r document it could not parse", name)

    def _factory(self, name: str, start_doc: dict[str, Any]):
        uid = start_doc["uid"]
        block = start_doc.get("ptystream")
        if not isinstance(block, dict):
            logger.info("run %s has no 'ptystream' block in its start document: skipped", uid)
            return [], []
        wanted = block.get("profile")
        if wanted not in (None, self._profile.name):
            logger.info(
                "run %s asks for profile %r; this process serves %r: skipped",
                uid,
                wanted,
                self._profile.name,
            )
            return [], []
        start = RunStart(
            run_uid=uid,
            geometry=self._profile.instrument.geometry(),
            plan=plan_from_start(block),
            scan_id=start_doc.get("scan_id"),
            profile=self._profile.name,
            metadata={"plan_name": start_doc.get("plan_name"), "time": start_doc.get("time")},
        )
        return [_RunParser(start, self._profile, self._sink)], []

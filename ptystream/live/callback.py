"""Bluesky documents to lightweight records, on the RunEngine's thread.

The callback parses documents and hands :mod:`ptystream.types` records to a :class:`RunSink`
(the pipeline), which must only enqueue them. It imports neither TensorFlow nor tiled, and it
never raises into the RunEngine: live reconstruction is not data saving, so an error is logged
(with the document that caused it) and the scan goes on.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from event_model import DocumentRouter, RunRouter, unpack_datum_page

from ptystream.config import Profile
from ptystream.live.frames import DatumFrame, RunAssets, StreamFrame
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
    """Per-run state: which descriptors carry frames and positions, and the run's assets."""

    def __init__(self, start: RunStart, profile: Profile, sink: RunSink):
        super().__init__()
        self._uid = start.run_uid
        self._sink = sink
        self._inst = profile.instrument
        self._frame_stream = self._inst.stream
        self._position_stream = self._inst.position_stream or self._inst.stream
        self._frame_key = self._inst.detector_key
        self._motor_keys = (self._inst.y_motor, self._inst.x_motor)
        self._roles: dict[str, tuple[bool, bool]] = {}
        self._frame_resources: set[str] = set()
        self.assets = RunAssets()
        sink.open_run(start)

    def descriptor(self, doc):
        name, keys = doc.get("name"), doc.get("data_keys", {})
        has_frame = name == self._frame_stream and self._frame_key in keys
        has_position = name == self._position_stream and all(k in keys for k in self._motor_keys)
        self._roles[doc["uid"]] = (has_frame, has_position)

    def event_page(self, doc):
        # RunRouter hands every event over as a one-row page, so this is the only event path.
        has_frame, has_position = self._roles.get(doc["descriptor"], (False, False))
        if not (has_frame or has_position):
            return
        data, seqs = doc["data"], doc["seq_num"]
        frames = data.get(self._frame_key) if has_frame else None
        positions = None
        if has_position:
            positions = self._inst.positions_m(*(data[k] for k in self._motor_keys))
        for i, seq in enumerate(seqs):
            frame = self._frame(frames[i]) if frames is not None else None
            position = (float(positions[i, 0]), float(positions[i, 1])) if has_position else None
            self._sink.submit(FrameRecord(self._uid, int(seq), frame, position))

    def _frame(self, value: Any) -> Any:
        """An inline array as it is; a datum id as a reference resolved later on the worker."""
        if isinstance(value, str):
            return DatumFrame(value, self.assets)
        return value

    def resource(self, doc):
        self.assets.resources[doc["uid"]] = doc

    def datum(self, doc):
        self.assets.datums[doc["datum_id"]] = doc

    def datum_page(self, doc):
        for datum in unpack_datum_page(doc):
            self.datum(datum)

    def stream_resource(self, doc):
        self.assets.stream_resources[doc["uid"]] = doc
        if doc.get("data_key") == self._frame_key:
            self._frame_resources.add(doc["uid"])

    def stream_datum(self, doc):
        sres = doc["stream_resource"]
        if sres not in self._frame_resources:
            return
        first_seq, stop_seq = doc["seq_nums"]["start"], doc["seq_nums"]["stop"]
        first_index, stop_index = doc["indices"]["start"], doc["indices"]["stop"]
        if stop_index - first_index != stop_seq - first_seq:
            logger.error(
                "run %s: stream datum %s covers %d rows for %d events; only one frame per event "
                "is supported: its frames are not used",
                self._uid,
                doc["uid"],
                stop_index - first_index,
                stop_seq - first_seq,
            )
            return
        for k, seq in enumerate(range(first_seq, stop_seq)):
            frame = StreamFrame(sres, first_index + k, self.assets)
            self._sink.submit(FrameRecord(self._uid, seq, frame, None))

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
        self._order = _Reorder()

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        try:
            for name_, doc_ in self._order(name, doc):
                self._router(name_, doc_)
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


#: Documents that arrived before the descriptor or stream resource they refer to, held at most.
_MAX_PARKED = 10_000


class _Reorder:
    """Restores the order the document model requires, for transports that do not keep it.

    Duplicated start and stop documents are dropped (a repeated start would otherwise restart
    the run). Events and event pages that arrive before their descriptor, and stream datums
    before their stream resource, are parked (at most ``_MAX_PARKED``) and delivered right
    after it. Duplicated events are let through: the pairer ignores repeated seq_nums.
    """

    def __init__(self) -> None:
        self._starts: dict[str, bool] = {}  # run uid -> stopped
        self._owner: dict[str, str] = {}  # descriptor / stream resource uid -> run uid
        self._parked: dict[str, list[tuple[str, dict]]] = {}
        self._n_parked = 0

    def __call__(self, name: str, doc: dict[str, Any]) -> list[tuple[str, dict]]:
        if name == "start":
            if doc["uid"] in self._starts:
                return []
            self._starts[doc["uid"]] = False
            return [(name, doc)]
        if name == "stop":
            run = doc.get("run_start")
            if self._starts.get(run, True):
                return []  # a repeated stop, or one of a run never started here
            self._starts[run] = True
            self._forget(run)
            return [(name, doc)]
        if name in ("descriptor", "stream_resource"):
            if doc["uid"] in self._owner:
                return []  # repeated: routing it twice would deliver each event twice
            self._owner[doc["uid"]] = doc.get("run_start", "")
            parked = self._parked.pop(doc["uid"], [])
            self._n_parked -= len(parked)
            return [(name, doc), *parked]
        awaited = {"event": "descriptor", "event_page": "descriptor"}.get(name)
        if name == "stream_datum":
            awaited = "stream_resource"
        if awaited is not None and doc[awaited] not in self._owner:
            if self._n_parked >= _MAX_PARKED:
                logger.error("more than %d early documents: dropping a %r", _MAX_PARKED, name)
                return []
            self._parked.setdefault(doc[awaited], []).append((name, doc))
            self._n_parked += 1
            return []
        return [(name, doc)]

    def _forget(self, run: str) -> None:
        for uid in [u for u, owner in self._owner.items() if owner == run]:
            del self._owner[uid]
        if len(self._starts) > 1000:  # keep the most recent runs' uids to spot duplicates
            for uid in list(self._starts)[:500]:
                del self._starts[uid]

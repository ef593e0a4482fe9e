"""Bluesky documents to lightweight records, on the RunEngine's thread.

The callback parses documents and hands :mod:`ptystream.types` records to a :class:`RunSink`
(the pipeline), which must only enqueue them. It imports neither TensorFlow nor tiled, and it
never raises into the RunEngine: live reconstruction is not data saving, so an error is logged
(with the document that caused it) and the scan goes on.

Bad documents are accounted for, not dropped: a frame row without frame data, with a missing or
non-numeric position or a seq_num below 1 reaches the pipeline as an
:class:`~ptystream.live.frames.Unusable` and is counted in ``frames.rejected`` with its reason;
a run whose ``ptystream`` start block is malformed is handed over as a :class:`RefusedStart`
(published ``failed``, the reason naming the field); the stop carries the frame stream's event
count (:class:`CountedStop`), from which the pipeline names the frames that never arrived.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from event_model import DocumentRouter, RunRouter, unpack_datum_page

from ptystream.config import Profile
from ptystream.live.frames import DatumFrame, RunAssets, StreamFrame, Unusable
from ptystream.live.ordering import DocumentOrder
from ptystream.types import FrameRecord, RunStart, RunStop, ScanPlan

__all__ = ["CountedStop", "PtychoCallback", "RefusedStart", "RunSink", "plan_from_start"]

logger = logging.getLogger(__name__)


class RunSink(Protocol):
    """Receives parsed records; every method must return at once (it runs on the RE thread)."""

    def open_run(self, start: RunStart) -> None: ...

    def submit(self, record: FrameRecord) -> None: ...

    def close_run(self, stop: RunStop) -> None: ...


@dataclass(frozen=True)
class CountedStop(RunStop):
    """A :class:`~ptystream.types.RunStop` with the stop document's ``num_events`` of the frame
    stream (None when the stop has none for it): how many frames the RunEngine emitted, the
    best measure of how many should have arrived."""

    frame_events: int | None = None


@dataclass(frozen=True)
class RefusedStart(RunStart):
    """A run whose start document cannot be reconstructed from (``refusal`` says why, naming the
    field): it is published ``failed`` at once and its frames are counted as rejected."""

    refusal: str = ""


def plan_from_start(block: dict[str, Any]) -> ScanPlan:
    """The :class:`ScanPlan` in a start document's ``ptystream`` block (missing keys are None).

    Raises ValueError naming the offending key when a value has the wrong form.
    """
    n_points = block.get("n_points")
    if n_points is not None and (
        not isinstance(n_points, int) or isinstance(n_points, bool) or n_points <= 0
    ):
        raise ValueError(f"ptystream.n_points must be a positive integer, got {n_points!r}")
    extent = block.get("extent_m")
    if extent is not None:
        try:
            (y0, y1), (x0, x1) = ((float(a), float(b)) for a, b in extent)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"ptystream.extent_m must be [[y_min, y_max], [x_min, x_max]], got {extent!r}"
            ) from exc
        if not all(math.isfinite(v) for v in (y0, y1, x0, x1)):
            raise ValueError(f"ptystream.extent_m must be finite, got {extent!r}")
        if not (y0 <= y1 and x0 <= x1):
            raise ValueError(f"ptystream.extent_m has min > max: {extent!r}")
        extent = ((y0, y1), (x0, x1))
    return ScanPlan(n_points=n_points, extent_m=extent)


class _RunParser(DocumentRouter):
    """Per-run state: which descriptors carry frames and positions, and the run's assets.

    A row it cannot use is never dropped silently: a frame row travels on as an
    :class:`~ptystream.live.frames.Unusable` (counted in ``frames.rejected`` by the worker);
    a position-only row (another stream) is logged, and its frame is then rejected as
    ``no position``.
    """

    def __init__(self, start: RunStart, profile: Profile, sink: RunSink):
        super().__init__()
        self._uid = start.run_uid
        self._sink = sink
        self._inst = profile.instrument
        self._frame_stream = self._inst.stream
        self._position_stream = self._inst.position_stream or self._inst.stream
        self._frame_key = self._inst.detector_key
        self._motor_keys = (self._inst.y_motor, self._inst.x_motor)
        self._dark_stream = profile.preprocess.dark_stream
        self._roles: dict[str, tuple[bool, bool]] = {}
        self._dark_descriptors: set[str] = set()
        self._frame_resources: set[str] = set()
        self._refused: Counter[str] = Counter()  # position-only rows refused, by reason
        self.assets = RunAssets()
        sink.open_run(start)

    def descriptor(self, doc):
        name, keys = doc.get("name"), doc.get("data_keys", {})
        has_frame = name == self._frame_stream and self._frame_key in keys
        has_position = name == self._position_stream and all(k in keys for k in self._motor_keys)
        self._roles[doc["uid"]] = (has_frame, has_position)
        if name is not None and name == self._dark_stream and self._frame_key in keys:
            self._dark_descriptors.add(doc["uid"])

    def event_page(self, doc):
        # RunRouter hands every event over as a one-row page, so this is the only event path.
        if doc["descriptor"] in self._dark_descriptors:
            frames = (doc.get("data") or {}).get(self._frame_key)
            for i, seq in enumerate(doc.get("seq_num") or []):
                self._dark(int(seq), self._frame(frames, i))
            return
        has_frame, has_position = self._roles.get(doc["descriptor"], (False, False))
        if not (has_frame or has_position):
            return
        data, seqs = doc.get("data") or {}, list(doc.get("seq_num") or [])
        frames = data.get(self._frame_key) if has_frame else None
        positions = None
        if has_position:
            positions = _Positions(data, self._motor_keys, len(seqs), self._inst)
        for i, seq in enumerate(seqs):
            frame = self._frame(frames, i) if has_frame else None
            position, why = positions.row(i) if positions is not None else (None, "")
            if not _is_seq_num(seq):
                self._refuse(has_frame, 0, "bad seq_num", f"seq_num {seq!r} (they count from 1)")
            elif why and not isinstance(frame, Unusable):
                self._refuse(has_frame, int(seq), "bad position", why)
            else:
                self._sink.submit(FrameRecord(self._uid, int(seq), frame, position))

    def _frame(self, frames: Any, i: int) -> Any:
        """Row ``i``'s frame: an inline array as it is, a datum id as a reference resolved later
        on the worker, or :class:`Unusable` when the event has none."""
        try:
            value = frames[i]
        except (TypeError, IndexError, KeyError):
            return Unusable("no frame data", f"the event has no {self._frame_key!r} row {i}")
        if value is None:
            return Unusable("no frame data", f"{self._frame_key} is None")
        if isinstance(value, str):
            return DatumFrame(value, self.assets)
        return value

    def _dark(self, seq: int, frame: Any) -> None:
        """A frame of the dark stream (``preprocess.dark_stream``), for the pre-processing."""
        if isinstance(frame, Unusable):
            logger.warning("run %s: dark frame %d: %s", self._uid, seq, frame.detail)
            return
        self._sink.submit(FrameRecord(self._uid, seq, frame, None, dark=True))

    def _refuse(self, has_frame: bool, seq: int, reason: str, detail: str) -> None:
        """A row that cannot be paired: its frame (if any) goes on as :class:`Unusable`, to be
        counted; a position-only row is logged (the first of each reason, then counted)."""
        if has_frame:
            refused: Any = Unusable(reason, detail)  # a frame reference, like DatumFrame
            self._sink.submit(FrameRecord(self._uid, seq, refused))
            return
        if not self._refused[reason]:
            logger.warning(
                "run %s: a position row refused (%s): %s; further ones are counted",
                self._uid,
                reason,
                detail,
            )
        self._refused[reason] += 1

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
        sres, descriptor = doc["stream_resource"], doc.get("descriptor")
        dark = descriptor in self._dark_descriptors
        if sres not in self._frame_resources or (
            descriptor in self._roles and not dark and not self._roles[descriptor][0]
        ):
            return
        try:
            first_seq, stop_seq = int(doc["seq_nums"]["start"]), int(doc["seq_nums"]["stop"])
            first_index, stop_index = int(doc["indices"]["start"]), int(doc["indices"]["stop"])
        except (KeyError, TypeError, ValueError) as exc:
            logger.error(
                "run %s: stream datum %s has no usable seq_nums/indices (%s: %s): its frames "
                "are not used",
                self._uid,
                doc.get("uid"),
                type(exc).__name__,
                exc,
            )
            return
        rows = range(first_seq, stop_seq)
        if stop_index - first_index != stop_seq - first_seq:
            detail = (
                f"stream datum {doc.get('uid')} covers {stop_index - first_index} rows for "
                f"{stop_seq - first_seq} events; only one frame per event is supported"
            )
            for seq in rows:
                self._sink.submit(FrameRecord(self._uid, seq, Unusable("unsupported", detail)))
            return
        for k, seq in enumerate(rows):
            if seq < 1:
                self._refuse(True, seq, "bad seq_num", f"seq_num {seq} (they count from 1)")
                continue
            frame = StreamFrame(sres, first_index + k, self.assets)
            if dark:
                self._dark(seq, frame)
            else:
                self._sink.submit(FrameRecord(self._uid, seq, frame, None))

    def stop(self, doc):
        for reason, n in self._refused.items():
            if n > 1:
                logger.warning("run %s: %d position rows refused (%s)", self._uid, n, reason)
        counts = doc.get("num_events") or {}
        events = counts.get(self._frame_stream) if isinstance(counts, dict) else None
        self._sink.close_run(
            CountedStop(
                run_uid=self._uid,
                exit_status=str(doc.get("exit_status", "success")),
                reason=str(doc.get("reason", "")),
                frame_events=events if _is_count(events) else None,
            )
        )


def _is_seq_num(value: Any) -> bool:
    """A seq_num the document model allows: an integer from 1 (bluesky counts from 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 1


def _is_count(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 0


class _Positions:
    """The probe positions of an event page's rows, in metres; a row whose readback is missing
    or not a finite number is named, not converted. Whole columns are converted at once (a
    fly scan's page has thousands of rows); only a page with a bad value is read row by row."""

    def __init__(self, data: dict[str, Any], keys: tuple[str, str], n: int, inst: Any):
        self._data, self._keys, self._inst = data, keys, inst
        self._rows: np.ndarray | None = None
        try:
            columns = [np.asarray(data[k], dtype=np.float64) for k in keys]
            if all(c.shape == (n,) for c in columns) and all(np.isfinite(c).all() for c in columns):
                self._rows = inst.positions_m(*columns)
        except (KeyError, TypeError, ValueError):
            pass

    def row(self, i: int) -> tuple[tuple[float, float] | None, str]:
        """Row ``i``'s ``(y, x)`` in metres and ``""``, or None and what is wrong with it."""
        if self._rows is not None:
            return (float(self._rows[i, 0]), float(self._rows[i, 1])), ""
        values = []
        for key in self._keys:
            column = self._data.get(key)
            if column is None:
                return None, f"the event has no {key!r}"
            try:
                value = column[i]
            except (TypeError, IndexError, KeyError):
                return None, f"{key!r} has no row {i}"
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                return None, f"{key} = {value!r} is not a number"
            if not math.isfinite(value):
                return None, f"{key} = {value!r} is not finite"
            values.append(float(value))
        y, x = self._inst.positions_m(*values)
        return (float(y), float(x)), ""


class PtychoCallback:
    """A ``callback(name, doc)`` that routes each run's documents to a fresh parser.

    Runs whose start document has no ``ptystream`` block, or names another profile, are skipped
    with one log line. A run whose block is malformed (``n_points`` not a positive integer, a
    bad ``extent_m``) is handed over as a :class:`RefusedStart`.

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
        self._order = DocumentOrder()

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        try:
            ordered = self._order(name, doc)
        except Exception as exc:
            self._ignored(name, exc)
            return
        for name_, doc_ in ordered:  # one bad document must not lose those released with it
            try:
                self._router(name_, doc_)
            except Exception as exc:
                self._ignored(name_, exc)

    def _ignored(self, name: str, exc: Exception) -> None:
        """A document nothing above foresaw: one error line (the traceback at DEBUG level)."""
        if self._raise:
            raise exc
        logger.error(
            "ptystream ignored a %r document it could not parse (%s: %s)",
            name,
            type(exc).__name__,
            exc,
            exc_info=logger.isEnabledFor(logging.DEBUG),
        )

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
        fields: dict[str, Any] = {
            "run_uid": uid,
            # None: the frame size comes from the detector's first frames
            "geometry": self._profile.geometry() if self._profile.frame_px else None,
            "scan_id": start_doc.get("scan_id"),
            "profile": self._profile.name,
            "metadata": {"plan_name": start_doc.get("plan_name"), "time": start_doc.get("time")},
        }
        try:
            start = RunStart(plan=plan_from_start(block), **fields)
        except ValueError as exc:
            refusal = f"start document: {exc}"
            logger.error("run %s: %s; it is published as failed", uid, refusal)
            start = RefusedStart(plan=ScanPlan(), refusal=refusal, **fields)
        return [_RunParser(start, self._profile, self._sink)], []

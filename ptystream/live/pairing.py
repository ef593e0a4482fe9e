"""Pair frames with positions by sequence number, read and validate them (synchronous).

Frames and positions may arrive in separate records, from separate streams and in any order; a
pair is released once both halves are there and the frame can be read (a frame in a file still
being written is retried on later calls, not waited for). Every frame is accounted for: used, or
rejected with a reason (the callback's :class:`~ptystream.live.frames.Unusable` rows included).
Duplicates of a seq_num are ignored. Frames that never arrived are named too: the seq_nums
missing up to what the run should have had (:meth:`FramePairer.missing`, :func:`expected_frames`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ptystream.live.frames import FrameNotReady, Unusable
from ptystream.types import FrameRecord

__all__ = [
    "PLAN_N_POINTS",
    "SEQ_GAPS",
    "STOP_NUM_EVENTS",
    "Accounting",
    "FramePairer",
    "MissingFrames",
    "PairedFrames",
    "expected_frames",
    "format_ranges",
    "parse_ranges",
]

logger = logging.getLogger(__name__)


#: Where a run's expected number of frames comes from, best first: the stop document's
#: ``num_events`` of the frame stream (what the RunEngine emitted), the start document's
#: ``ptystream.n_points`` (what the plan announced; used only for a run that stopped with
#: success), else the highest seq_num received (only gaps below it can be named).
STOP_NUM_EVENTS, PLAN_N_POINTS, SEQ_GAPS = "stop num_events", "plan n_points", "seq_num gaps"
#: Seq_num ranges written into the metadata at most; the rest are summarised (a run losing
#: every other frame must not make its metadata huge). :class:`MissingFrames` keeps them all.
MAX_RANGES_SHOWN = 100


def expected_frames(
    stop_events: int | None, plan_points: int | None, exit_status: str | None
) -> tuple[int | None, str]:
    """How many frames a run should have had, and how that is known (see :data:`SEQ_GAPS`).

    ``stop_events`` is the stop document's ``num_events`` of the frame stream (None without a
    stop or without that stream in it); ``exit_status`` is None when the run ended without a
    stop (frames planned but never taken are not missing, so the plan is not used then).
    """
    if stop_events is not None:
        return stop_events, STOP_NUM_EVENTS
    if plan_points is not None and exit_status == "success":
        return plan_points, PLAN_N_POINTS
    return None, SEQ_GAPS


def format_ranges(ranges: tuple[tuple[int, int], ...], limit: int = MAX_RANGES_SHOWN) -> str:
    """Inclusive ``(first, last)`` ranges as compact text, ``"12-46,80"``; beyond ``limit``
    ranges the text ends with ``" (+k more ranges)"``."""
    text = ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges[:limit])
    if len(ranges) > limit:
        text += f" (+{len(ranges) - limit} more ranges)"
    return text


def parse_ranges(text: str) -> list[tuple[int, int]]:
    """The ranges of :func:`format_ranges`' text (``"12-46,80"`` -> ``[(12, 46), (80, 80)]``).
    Raises ValueError for a text cut at ``limit`` ranges: read the full list from the run's
    :class:`MissingFrames` (or the raw run) instead."""
    if "more ranges" in text:
        raise ValueError(f"{text!r} lists only the first ranges")
    out = []
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        out.append((int(first), int(last or first)))
    return out


@dataclass(frozen=True)
class MissingFrames:
    """Frames a run should have had but never received.

    Attributes
    ----------
    ranges : inclusive seq_num ranges ``(first, last)``, ascending.
    expected : the number of frames the run should have had (seq_nums ``1..expected``); for
        :data:`SEQ_GAPS`, the highest seq_num received.
    source : how ``expected`` is known: :data:`STOP_NUM_EVENTS`, :data:`PLAN_N_POINTS` or
        :data:`SEQ_GAPS`.
    """

    ranges: tuple[tuple[int, int], ...] = ()
    expected: int | None = None
    source: str = SEQ_GAPS

    @property
    def count(self) -> int:
        return sum(last - first + 1 for first, last in self.ranges)

    def seq_nums(self) -> list[int]:
        """Every missing seq_num (for a backfill from the raw run)."""
        return [seq for first, last in self.ranges for seq in range(first, last + 1)]

    def describe(self) -> str:
        """``"35 of 150 frames never arrived (seq_nums 41-75; expected from the stop
        document's num_events)"``, for a log line or a run's reason."""
        of = f" of {self.expected}" if self.source != SEQ_GAPS else ""
        how = {
            STOP_NUM_EVENTS: "expected from the stop document's num_events",
            PLAN_N_POINTS: "expected from the plan's n_points",
            SEQ_GAPS: "gaps in the seq_nums received",
        }.get(self.source, self.source)
        frames = "frame" if self.count == 1 else "frames"
        seq_nums = format_ranges(self.ranges)
        return f"{self.count}{of} {frames} never arrived (seq_nums {seq_nums}; {how})"

    def as_dict(self) -> dict[str, object]:
        """``frames.missing`` of the metadata: count, seq_nums (compact ranges), expected,
        source."""
        return {
            "count": self.count,
            "seq_nums": format_ranges(self.ranges),
            "expected": self.expected,
            "source": self.source,
        }


@dataclass
class Accounting:
    """Frame bookkeeping of one run, published in its final metadata (``frames``).

    ``missing`` is set at the end of intake; ``frames.missing`` appears in the metadata only
    when frames are missing."""

    received: int = 0
    backfilled: int = 0
    """Frames read from the raw run in Tiled because the document stream lost them."""
    used: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    missing: MissingFrames | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "received": self.received,
            "used": self.used,
            "rejected": dict(self.rejected),
            "duplicates_ignored": self.duplicates,
        }
        if self.backfilled:
            out["backfilled"] = self.backfilled
        if self.missing is not None and self.missing.count:
            out["missing"] = self.missing.as_dict()
        return out


@dataclass(frozen=True)
class PairedFrames:
    """Frames ``(k, N, N)`` float32 with positions ``(k, 2)`` in metres and their seq_nums."""

    seq_nums: np.ndarray
    frames: np.ndarray
    positions_m: np.ndarray

    def __len__(self) -> int:
        return len(self.seq_nums)


@dataclass
class _Pair:
    seq: int
    frame: Any
    position: tuple[float, float]
    next_try: float = 0.0


def _as_is(frame: Any) -> Any:
    return frame


def _ignore(frame: Any) -> None:
    return None


class FramePairer:
    """Collects records of one run and releases validated (frame, position) pairs.

    Parameters
    ----------
    frame_shape : the detector's frame shape ``(H, W)``; None: that of the first valid frame
        (a leading dimension of 1 is squeezed); frames of another shape are 'wrong shape'.
    resolve : turns a record's frame (an array or a reference) into an array; raises
        :class:`~ptystream.live.frames.FrameNotReady` while its data is not written yet.
    discard : called once with every record frame that leaves the pairer (used, rejected or a
        duplicate), so a memory budget can be released.
    file_timeout_s : how long after the run's end (:meth:`close`) a frame may stay not ready
        before it is rejected as unreadable; while the run goes on, a detector may keep its
        file locked, so frames are retried (every ``_RETRY_S``) without a limit.
    """

    def __init__(
        self,
        frame_shape: tuple[int, int] | None = None,
        *,
        resolve: Callable[[Any], Any] = _as_is,
        discard: Callable[[Any], None] = _ignore,
        file_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._shape = frame_shape
        self._resolve = resolve
        self._discard = discard
        self._timeout = file_timeout_s
        self._clock = clock
        self._frames: dict[int, Any] = {}
        self._positions: dict[int, tuple[float, float]] = {}
        self._done: set[int] = set()
        # the seq_nums that brought a frame: all of 1.._low, and those above it in _above
        self._low = 0
        self._above: set[int] = set()
        self._paired: list[_Pair] = []
        self._closed_at: float | None = None
        self.accounting = Accounting()

    @property
    def waiting(self) -> int:
        """Frames received but not yet used or rejected."""
        return len(self._frames) + len(self._paired)

    def add(self, record: FrameRecord, *, backfilled: bool = False) -> None:
        """Take one record's frame and/or position (bookkeeping only: nothing is read here).

        A frame the callback refused (:class:`~ptystream.live.frames.Unusable`) is counted as
        received and rejected with its reason; a seq_num below 1 cannot be paired and is
        rejected as ``bad seq_num``. ``backfilled``: the frame was read from the raw run (counted
        as ``backfilled``, not ``received``)."""
        seq, frame = record.seq_num, record.frame
        if seq < 1:
            if frame is not None:
                self.accounting.received += 1
                if isinstance(frame, Unusable):
                    self._reject(frame, frame.reason, frame.detail)
                else:
                    self._reject(frame, "bad seq_num", f"seq_num {seq} (they count from 1)")
            return
        if frame is not None:
            if not self._arrived(seq):
                self.accounting.duplicates += 1
                self._discard(frame)
            elif isinstance(frame, Unusable):
                self.accounting.received += 1
                self._reject(frame, frame.reason, f"seq_num {seq}: {frame.detail}")
                self._done.add(seq)
                self._positions.pop(seq, None)
                return
            elif backfilled:
                self.accounting.backfilled += 1
                self._frames[seq] = frame
            else:
                self.accounting.received += 1
                self._frames[seq] = frame
        if record.position_m is not None and seq not in self._positions and seq not in self._done:
            y, x = (float(v) for v in record.position_m)
            if np.isfinite(y) and np.isfinite(x):
                self._positions[seq] = (y, x)
            else:
                logger.warning("seq_num %d: position %s is not finite: ignored", seq, (y, x))
        if seq in self._frames and seq in self._positions:
            self._paired.append(_Pair(seq, self._frames.pop(seq), self._positions.pop(seq)))
            self._done.add(seq)

    def missing(self, expected: int | None = None, source: str = SEQ_GAPS) -> MissingFrames:
        """The seq_nums in ``1..expected`` that brought no frame (``expected`` None: up to the
        highest received, which is all that can be said while a run goes on). Cheap while
        frames arrive in order: only seq_nums above the first gap are looked at."""
        upper = max(self._above, default=self._low) if expected is None else expected
        ranges: list[tuple[int, int]] = []
        first = self._low + 1
        for seq in sorted(s for s in self._above if s <= upper):
            if seq > first:
                ranges.append((first, seq - 1))
            first = seq + 1
        if first <= upper:
            ranges.append((first, upper))
        return MissingFrames(tuple(ranges), upper, source)

    def _arrived(self, seq: int) -> bool:
        """Note that ``seq`` brought a frame; False if one had arrived before (a duplicate)."""
        if seq <= self._low or seq in self._above:
            return False
        self._above.add(seq)
        while self._low + 1 in self._above:
            self._low += 1
            self._above.remove(self._low)
        return True

    def take(self) -> PairedFrames | None:
        """Pairs whose frames could be read and passed validation since the last call."""
        ready: list[tuple[int, np.ndarray, tuple[float, float]]] = []
        waiting: list[_Pair] = []
        now = self._clock()
        for pair in self._paired:
            frame = self._read(pair, now) if now >= pair.next_try else _NOT_READY
            if frame is _NOT_READY:
                waiting.append(pair)
            elif frame is not None:
                ready.append((pair.seq, frame, pair.position))
        self._paired = waiting
        if not ready:
            return None
        seqs, frames, positions = zip(*ready, strict=True)
        self.accounting.used += len(seqs)
        return PairedFrames(np.asarray(seqs), np.stack(frames), np.asarray(positions))

    def close(self) -> PairedFrames | None:
        """End of run: frames still waiting for a position are rejected as 'no position'; from
        now on a frame not ready for ``file_timeout_s`` is rejected as 'unreadable'. Returns
        the last pairs, as :meth:`take`."""
        for seq, frame in self._frames.items():
            self._reject(frame, "no position")
            self._done.add(seq)
        self._frames.clear()
        self._closed_at = self._clock()
        return self.take()

    def expire(self) -> PairedFrames | None:
        """One last attempt at every frame not ready yet, then 'unreadable' (after :meth:`close`,
        when waiting is over)."""
        self._closed_at = -float("inf")
        for pair in self._paired:
            pair.next_try = 0.0
        return self.take()

    def abandon(self, reason: str) -> None:
        """Reject every frame not yet released with ``reason`` (the run cannot use them)."""
        for seq, frame in self._frames.items():
            self._reject(frame, reason)
            self._done.add(seq)
        self._frames.clear()
        for pair in self._paired:
            self._reject(pair.frame, reason)
        self._paired = []

    def _read(self, pair: _Pair, now: float) -> Any:
        """The validated float32 frame, None if rejected, or _NOT_READY to retry later."""
        try:
            frame = self._resolve(pair.frame)
        except FrameNotReady as exc:
            if self._closed_at is None or now - self._closed_at <= self._timeout:
                pair.next_try = now + _RETRY_S
                return _NOT_READY
            self._reject(pair.frame, "unreadable", f"seq_num {pair.seq}: {exc}")
            return None
        except Exception as exc:
            self._reject(pair.frame, "unreadable", f"seq_num {pair.seq}: {exc!r}")
            return None
        reason = self._problem(frame)
        if reason is not None:
            self._reject(pair.frame, reason, f"seq_num {pair.seq}")
            return None
        self._discard(pair.frame)
        return _squeezed(frame).astype(np.float32, copy=False)

    def _problem(self, frame: Any) -> str | None:
        if not isinstance(frame, np.ndarray) or frame.dtype.kind not in "uif":
            return "not an array"
        frame = _squeezed(frame)
        if frame.ndim != 2 or (self._shape is not None and frame.shape != self._shape):
            return "wrong shape"
        if not np.isfinite(frame).all():
            return "not finite"
        if self._shape is None:
            self._shape = frame.shape
        return None

    @property
    def frame_shape(self) -> tuple[int, int] | None:
        """The detector's frame shape (None until a valid frame was read)."""
        return self._shape

    def reject(self, reason: str, count: int = 1) -> None:
        """Count ``count`` frames released by :meth:`take` and then found unusable (e.g.
        ``saturated`` by the pre-processing)."""
        self.accounting.rejected[reason] += count

    def _reject(self, frame: Any, reason: str, detail: str = "") -> None:
        if not self.accounting.rejected[reason]:
            logger.warning("frame rejected (%s): %s; further ones are counted", reason, detail)
        self.accounting.rejected[reason] += 1
        self._discard(frame)


_NOT_READY = object()
#: Seconds between two attempts to read a frame whose data is not there yet.
_RETRY_S = 0.2


def _squeezed(frame: np.ndarray) -> np.ndarray:
    return frame[0] if frame.ndim == 3 and frame.shape[0] == 1 else frame

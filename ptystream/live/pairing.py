"""Pair frames with positions by sequence number, read and validate them (synchronous).

Frames and positions may arrive in separate records, from separate streams and in any order; a
pair is released once both halves are there and the frame can be read (a frame in a file still
being written is retried on later calls, not waited for). Every frame is accounted for: used, or
rejected with a reason. Duplicates of a seq_num are ignored.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ptystream.live.frames import FrameNotReady
from ptystream.types import FrameRecord

__all__ = ["Accounting", "FramePairer", "PairedFrames"]

logger = logging.getLogger(__name__)


@dataclass
class Accounting:
    """Frame bookkeeping of one run, published in its final metadata."""

    received: int = 0
    used: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "received": self.received,
            "used": self.used,
            "rejected": dict(self.rejected),
            "duplicates_ignored": self.duplicates,
        }


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
    frame_px : expected side of the square frames; a leading dimension of 1 is squeezed.
    resolve : turns a record's frame (an array or a reference) into an array; raises
        :class:`~ptystream.live.frames.FrameNotReady` while its data is not written yet.
    discard : called once with every record frame that leaves the pairer (used, rejected or a
        duplicate), so a memory budget can be released.
    saturation_counts, max_saturated_px : frames with more than ``max_saturated_px`` pixels at
        or above ``saturation_counts`` are rejected as saturated (None: no check).
    file_timeout_s : how long after the run's end (:meth:`close`) a frame may stay not ready
        before it is rejected as unreadable; while the run goes on, a detector may keep its
        file locked, so frames are retried (every ``_RETRY_S``) without a limit.
    """

    def __init__(
        self,
        frame_px: int,
        *,
        resolve: Callable[[Any], Any] = _as_is,
        discard: Callable[[Any], None] = _ignore,
        saturation_counts: float | None = None,
        max_saturated_px: int = 0,
        file_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._shape = (frame_px, frame_px)
        self._resolve = resolve
        self._discard = discard
        self._saturation = saturation_counts
        self._max_saturated = max_saturated_px
        self._timeout = file_timeout_s
        self._clock = clock
        self._frames: dict[int, Any] = {}
        self._positions: dict[int, tuple[float, float]] = {}
        self._done: set[int] = set()
        self._paired: list[_Pair] = []
        self._closed_at: float | None = None
        self.accounting = Accounting()

    @property
    def waiting(self) -> int:
        """Frames received but not yet used or rejected."""
        return len(self._frames) + len(self._paired)

    def add(self, record: FrameRecord) -> None:
        """Take one record's frame and/or position (bookkeeping only: nothing is read here)."""
        seq = record.seq_num
        if record.frame is not None:
            if seq in self._frames or seq in self._done:
                self.accounting.duplicates += 1
                self._discard(record.frame)
            else:
                self.accounting.received += 1
                self._frames[seq] = record.frame
        if record.position_m is not None and seq not in self._positions and seq not in self._done:
            y, x = (float(v) for v in record.position_m)
            if np.isfinite(y) and np.isfinite(x):
                self._positions[seq] = (y, x)
            else:
                logger.warning("seq_num %d: position %s is not finite: ignored", seq, (y, x))
        if seq in self._frames and seq in self._positions:
            self._paired.append(_Pair(seq, self._frames.pop(seq), self._positions.pop(seq)))
            self._done.add(seq)

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
        if frame.shape != self._shape:
            return "wrong shape"
        if not np.isfinite(frame).all():
            return "not finite"
        if self._saturation is not None:
            if np.count_nonzero(frame >= self._saturation) > self._max_saturated:
                return "saturated"
        return None

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

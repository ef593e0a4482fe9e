"""Reconcile a live run with its raw record: the document stream is the fast path, the raw run
that bluesky's ``TiledWriter`` saves in Tiled is the record.

A gap in the seq_nums that stays open for ``ingest.backfill_after_s`` (a 0MQ proxy restarted, a
consumer that fell behind) is filled from the raw run; what is still missing at the stop is
read before the final passes; a run that goes silent is looked up there, and closed from the
stop document the writer saved if its own never came. The raw run is reached through a
:class:`RawSource` (:class:`ptystream.store.raw.RawRun`), so this module knows nothing of Tiled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from ptystream.live.callback import CountedStop
from ptystream.live.pairing import MissingFrames
from ptystream.types import FrameRecord

__all__ = ["RawSource", "Reconciler"]

logger = logging.getLogger(__name__)

#: The reason a run closed from its raw record carries.
STOP_FROM_RAW = "its stop document never arrived: closed from the raw run's, in Tiled"


class RawSource(Protocol):
    """A run's raw record (:class:`ptystream.store.raw.RawRun`)."""

    def rows(self, seq_nums: list[int]) -> list[tuple[int, np.ndarray, Any]]: ...

    def stop(self) -> dict[str, Any] | None: ...


class Reconciler:
    """One run's reconciliation with its raw record.

    Parameters
    ----------
    uid : the run.
    find : looks the raw run up (None while it is not there: asked again later).
    after_s : how old a gap, or a silence, is before the raw run is read.
    frame_stream : the stream of the frames (its ``num_events`` in the stop document).
    """

    def __init__(
        self,
        uid: str,
        find: Callable[[str], RawSource | None],
        after_s: float,
        frame_stream: str,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.uid = uid
        self.after_s = after_s
        self._find = find
        self._stream = frame_stream
        self._clock = clock
        self._source: RawSource | None = None
        self._first_seen: dict[int, float] = {}
        self.next_look = clock() + after_s

    def source(self) -> RawSource | None:
        if self._source is None:
            self._source = self._find(self.uid)
        return self._source

    def overdue(self, gaps: MissingFrames) -> list[int]:
        """The seq_nums of ``gaps`` (those open now) first seen at least ``after_s`` ago."""
        now = self._clock()
        seen = {seq: self._first_seen.get(seq, now) for seq in gaps.seq_nums()}
        self._first_seen = seen
        return [seq for seq, t in seen.items() if now - t >= self.after_s]

    def fetch(self, seq_nums: list[int]) -> list[FrameRecord]:
        """Records of those of ``seq_nums`` the raw run holds (frame, and position if saved)."""
        source = self.source()
        if source is None or not seq_nums:
            return []
        return [
            FrameRecord(self.uid, seq, frame, position)
            for seq, frame, position in source.rows(seq_nums)
        ]

    def stop(self) -> CountedStop | None:
        """The raw run's stop document as the live one would have been (None: not saved)."""
        source = self.source()
        doc = source.stop() if source is not None else None
        if doc is None:
            return None
        events = (doc.get("num_events") or {}).get(self._stream)
        return CountedStop(
            run_uid=self.uid,
            exit_status=str(doc.get("exit_status", "success")),
            reason=STOP_FROM_RAW,
            frame_events=int(events) if isinstance(events, int) else None,
        )

"""A run's raw record in Tiled read while its live reconstruction goes on: the frames the
document stream lost (backfill) and the stop document, when the live one never came.

bluesky's ``TiledWriter`` (in the demo, and at a facility) saves every event of the run, in
seq_num order, as rows of its stream (row ``seq_num - 1``), and the stop document into the
run's metadata. The document stream (0MQ, Kafka) is the fast path; this is the record.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ptystream.config import Profile
from ptystream.store.layout import RAW_KEY

__all__ = ["RawRun"]

logger = logging.getLogger(__name__)


class RawRun:
    """One run in the raw catalog; every read looks the run up again (it grows while the
    writer appends)."""

    def __init__(self, catalog, uid: str, profile: Profile):
        self._catalog = catalog
        self.uid = uid
        self._inst = profile.instrument

    @classmethod
    def find(cls, root, uid: str, profile: Profile) -> RawRun | None:
        """The run ``uid`` in ``root``'s raw catalog, or None when it is not there (yet)."""
        try:
            if RAW_KEY not in root or uid not in root[RAW_KEY]:
                return None
        except Exception as exc:  # Tiled down: there is nothing to read now
            logger.info("raw run %s: not looked up (%s)", uid, exc)
            return None
        return cls(root[RAW_KEY], uid, profile)

    def stop(self) -> dict[str, Any] | None:
        """The run's stop document as the writer saved it (None while the run goes on)."""
        stop = self._catalog[self.uid].metadata.get("stop")
        return dict(stop) if stop else None

    def rows(self, seq_nums: list[int]) -> list[tuple[int, np.ndarray, tuple[float, float] | None]]:
        """``(seq_num, frame, position)`` of those of ``seq_nums`` the raw run holds so far:
        the frame as the detector gave it (a leading axis of 1 dropped), the position in metres
        (:meth:`~ptystream.config.InstrumentSettings.positions_m`; None if not saved yet)."""
        inst = self._inst
        run = self._catalog[self.uid]
        if inst.stream not in run:
            return []
        frames = run[inst.stream][inst.detector_key]
        have = int(frames.shape[0])
        wanted = sorted(s for s in set(seq_nums) if 1 <= s <= have)
        if not wanted:
            return []
        positions = self._positions(run)
        out = []
        for first, last in _ranges(wanted):
            block = np.asarray(frames[first - 1 : last])
            if block.ndim == 4 and block.shape[1] == 1:
                block = block[:, 0]
            for seq, frame in zip(range(first, last + 1), block, strict=True):
                position = None
                if positions is not None and seq <= len(positions):
                    position = (float(positions[seq - 1, 0]), float(positions[seq - 1, 1]))
                out.append((seq, frame, position))
        return out

    def _positions(self, run) -> np.ndarray | None:
        inst = self._inst
        stream = inst.position_stream or inst.stream
        if stream not in run:
            return None
        node = run[stream]
        if inst.y_motor not in node or inst.x_motor not in node:
            return None
        y, x = (np.asarray(node[k].read()).reshape(-1) for k in (inst.y_motor, inst.x_motor))
        n = min(len(y), len(x))
        return inst.positions_m(y[:n], x[:n])


def _ranges(seq_nums: list[int]) -> list[tuple[int, int]]:
    """Sorted seq_nums as inclusive runs of consecutive values."""
    out: list[tuple[int, int]] = []
    for seq in seq_nums:
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out

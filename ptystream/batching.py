"""Pair frames with positions by sequence number and validate them (pure, synchronous).

Frames and positions may arrive in separate records and in any order; a pair is released as soon
as both halves are present. Every frame is accounted for: used, or rejected with a reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ptystream.types import FrameRecord

__all__ = ["Accounting", "FramePairer", "PairedFrames"]


@dataclass
class Accounting:
    """Frame bookkeeping of one run, published in its final metadata."""

    received: int = 0
    used: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {"received": self.received, "used": self.used, "rejected": dict(self.rejected)}


@dataclass(frozen=True)
class PairedFrames:
    """Frames ``(k, N, N)`` float32 with positions ``(k, 2)`` in metres and their seq_nums."""

    seq_nums: np.ndarray
    frames: np.ndarray
    positions_m: np.ndarray

    def __len__(self) -> int:
        return len(self.seq_nums)


class FramePairer:
    """Collects records of one run and releases validated (frame, position) pairs.

    Parameters
    ----------
    frame_px : expected side of the square frames; a leading dimension of 1 is squeezed.
    """

    def __init__(self, frame_px: int):
        self._shape = (frame_px, frame_px)
        self._frames: dict[int, np.ndarray] = {}
        self._positions: dict[int, tuple[float, float]] = {}
        self._done: set[int] = set()
        self._ready: list[tuple[int, np.ndarray, tuple[float, float]]] = []
        self.accounting = Accounting()

    def add(self, record: FrameRecord) -> None:
        """Take one record's frame and/or position (duplicates of a seq_num are ignored)."""
        seq = record.seq_num
        if record.frame is not None and seq not in self._frames and seq not in self._done:
            self.accounting.received += 1
            frame = self._validate(record.frame)
            if frame is None:
                self._done.add(seq)
            else:
                self._frames[seq] = frame
        if record.position_m is not None and seq not in self._positions:
            position = tuple(float(v) for v in record.position_m)
            if np.isfinite(position).all():
                self._positions[seq] = (position[0], position[1])
        if seq in self._frames and seq in self._positions:
            self._ready.append((seq, self._frames.pop(seq), self._positions.pop(seq)))
            self._done.add(seq)

    def take(self) -> PairedFrames | None:
        """Pairs completed since the last call, or None."""
        if not self._ready:
            return None
        seqs, frames, positions = zip(*self._ready, strict=True)
        self._ready = []
        self.accounting.used += len(seqs)
        return PairedFrames(
            np.asarray(seqs), np.stack(frames).astype(np.float32), np.asarray(positions)
        )

    def close(self) -> None:
        """End of run: frames still waiting for a position are rejected as 'no position'."""
        for seq in list(self._frames):
            self.accounting.rejected["no position"] += 1
            self._done.add(seq)
        self._frames.clear()

    def _validate(self, frame: object) -> np.ndarray | None:
        if not isinstance(frame, np.ndarray):
            self.accounting.rejected["not an array"] += 1
            return None
        if frame.ndim == 3 and frame.shape[0] == 1:
            frame = frame[0]
        if frame.shape != self._shape:
            self.accounting.rejected["wrong shape"] += 1
            return None
        if not np.isfinite(frame).all():
            self.accounting.rejected["not finite"] += 1
            return None
        return frame

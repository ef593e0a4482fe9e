"""Frames waiting for the engine, held within a memory budget and spilled to disk beyond it.

During a burst (a fast detector, a slow engine, positions that arrive late) frames pile up
between the callback and the engine. :class:`FrameStore` keeps them in memory up to a budget and
appends the rest to one spill file, from which the worker reads them back in turn: a burst costs
disk, never frames. Holding runs on the callback's thread, so it is a counter update, or one
unbuffered ``write`` of the frame's bytes (tens of microseconds for 128 x 128 float32).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FrameStore", "SpilledFrame"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpilledFrame:
    """A frame's bytes at ``offset`` in the store's spill file."""

    offset: int
    shape: tuple[int, ...]
    dtype: str


class FrameStore:
    """Counts the bytes of frames held in memory and spills beyond ``budget_bytes``.

    Thread-safe: :meth:`hold` runs on the callback's thread, :meth:`load` and :meth:`release`
    on the worker's. The spill file lives in ``directory`` (a temporary one by default) and is
    emptied whenever nothing spilled is outstanding.
    """

    def __init__(self, budget_bytes: int, directory: str | Path | None = None):
        self.budget_bytes = int(budget_bytes)
        self._dir = Path(directory) if directory is not None else None
        self._lock = threading.Lock()
        self._held = 0
        self._outstanding = 0
        self._fd: int | None = None
        self._path: Path | None = None
        self._end = 0
        self.peak_bytes = 0

    @property
    def held_bytes(self) -> int:
        """Bytes of frames held in memory now."""
        return self._held

    @property
    def spilled_outstanding(self) -> int:
        """Frames on disk not yet released."""
        return self._outstanding

    def hold(self, frame: Any) -> Any:
        """``frame`` itself if it fits the budget (counted until :meth:`release`), else a
        :class:`SpilledFrame`. Anything but a numpy array is passed through uncounted."""
        if not isinstance(frame, np.ndarray):
            return frame
        with self._lock:
            if self._held + frame.nbytes <= self.budget_bytes:
                self._held += frame.nbytes
                self.peak_bytes = max(self.peak_bytes, self._held)
                return frame
            return self._spill(np.ascontiguousarray(frame))

    def load(self, frame: Any) -> Any:
        """The array behind a :class:`SpilledFrame`; anything else unchanged."""
        if not isinstance(frame, SpilledFrame):
            return frame
        count = int(np.prod(frame.shape))
        data = os.pread(self._fd, count * np.dtype(frame.dtype).itemsize, frame.offset)
        return np.frombuffer(data, dtype=frame.dtype).reshape(frame.shape).copy()

    def release(self, frame: Any) -> None:
        """``frame`` (as returned by :meth:`hold`) has left the store: uncount it."""
        with self._lock:
            if isinstance(frame, SpilledFrame):
                self._outstanding -= 1
                if self._outstanding == 0 and self._fd is not None:
                    os.ftruncate(self._fd, 0)
                    self._end = 0
            elif isinstance(frame, np.ndarray):
                self._held -= frame.nbytes

    def close(self) -> None:
        """Delete the spill file."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._path is not None:
                self._path.unlink(missing_ok=True)
                self._path = None

    def _spill(self, frame: np.ndarray) -> SpilledFrame:
        if self._fd is None:
            if self._dir is not None:
                self._dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="ptystream-spill-", suffix=".bin", dir=self._dir)
            self._fd, self._path = fd, Path(name)
            logger.warning(
                "frames exceed the memory budget of %.0f MiB: spilling to %s",
                self.budget_bytes / 2**20,
                name,
            )
        data = frame.tobytes()
        offset = self._end
        os.pwrite(self._fd, data, offset)
        self._end += len(data)
        self._outstanding += 1
        return SpilledFrame(offset, frame.shape, frame.dtype.str)

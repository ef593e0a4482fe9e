"""Frames waiting for the engine, held within a memory budget and spilled to disk beyond it.

During a burst (a fast detector, a slow engine, positions that arrive late) frames pile up
between the callback and the engine. :class:`FrameStore` keeps them in memory up to a budget and
appends the rest to one spill file, from which the worker reads them back in turn: a burst costs
disk, never frames. Holding runs on the callback's thread, so it only counts bytes or reserves
a place in the file; a writer thread of its own does the I/O (a write on the callback's thread
gives up the GIL and may wait milliseconds to get it back). A frame read back before it was
written comes from the writer's queue.
"""

from __future__ import annotations

import logging
import os
import queue
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
    """A frame's bytes at ``offset`` in the store's spill file (of that ``generation``)."""

    offset: int
    shape: tuple[int, ...]
    dtype: str
    generation: int = 0


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
        self._generation = 0  # bumped when the file is emptied: queued writes of before are void
        self._unwritten: dict[tuple[int, int], np.ndarray] = {}
        self._writes: queue.SimpleQueue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._failed = False
        self.peak_bytes = 0

    @property
    def held_bytes(self) -> int:
        """Bytes of frames held in memory now (not counting those on their way to disk)."""
        return self._held

    @property
    def spilled_outstanding(self) -> int:
        """Spilled frames not yet released."""
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
            if self._writer is None and not self._open():
                self._held += frame.nbytes  # over budget: better than losing the frame
                return frame
            ref = SpilledFrame(self._end, frame.shape, frame.dtype.str, self._generation)
            self._end += frame.nbytes
            self._outstanding += 1
            self._unwritten[(ref.generation, ref.offset)] = frame
        self._writes.put(ref)
        return ref

    def load(self, frame: Any) -> Any:
        """The array behind a :class:`SpilledFrame`; anything else unchanged."""
        if not isinstance(frame, SpilledFrame):
            return frame
        with self._lock:
            pending = self._unwritten.get((frame.generation, frame.offset))
        if pending is not None:
            return pending
        size = int(np.prod(frame.shape)) * np.dtype(frame.dtype).itemsize
        data = os.pread(self._fd, size, frame.offset)
        return np.frombuffer(data, dtype=frame.dtype).reshape(frame.shape).copy()

    def release(self, frame: Any) -> None:
        """``frame`` (as returned by :meth:`hold`) has left the store: uncount it."""
        with self._lock:
            if isinstance(frame, SpilledFrame):
                self._unwritten.pop((frame.generation, frame.offset), None)
                self._outstanding -= 1
                if self._outstanding == 0:
                    os.ftruncate(self._fd, 0)
                    self._end = 0
                    self._generation += 1
            elif isinstance(frame, np.ndarray):
                self._held -= frame.nbytes

    def close(self) -> None:
        """Stop the writer and delete the spill file."""
        if self._writer is not None:
            self._writes.put(None)
            self._writer.join()
            self._writer = None
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._path is not None:
                self._path.unlink(missing_ok=True)
                self._path = None

    def _open(self) -> bool:
        """Create the spill file and its writer; False (logged once) if the file cannot be made:
        frames then stay in memory beyond the budget."""
        if self._failed:
            return False
        try:
            if self._dir is not None:
                self._dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="ptystream-spill-", suffix=".bin", dir=self._dir)
        except OSError as exc:
            self._failed = True
            logger.error(
                "cannot create a spill file in %s (%s): frames stay in memory", self._dir, exc
            )
            return False
        self._fd, self._path = fd, Path(name)
        self._writer = threading.Thread(target=self._write, name="ptystream-spill", daemon=True)
        self._writer.start()
        logger.warning(
            "frames exceed the memory budget of %.1f MiB: spilling to %s",
            self.budget_bytes / 2**20,
            name,
        )
        return True

    def _write(self) -> None:
        while (ref := self._writes.get()) is not None:
            key = (ref.generation, ref.offset)
            with self._lock:
                frame = self._unwritten.get(key)
            if frame is None:
                continue  # released (read from memory) before its turn came
            try:
                os.pwrite(self._fd, frame.tobytes(), ref.offset)
            except OSError as exc:  # disk full: the frame stays in memory (read from there)
                if not self._failed:
                    logger.error("spill write failed (%s): frames stay in memory", exc)
                self._failed = True
                continue
            with self._lock:
                self._unwritten.pop(key, None)

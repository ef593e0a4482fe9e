"""Reconstruction engines: the only package that imports TensorFlow.

Importing this package is cheap; TensorFlow is imported by :func:`configure_tensorflow` and by
:func:`make_engine` for the AD engine only (the ePIE and mPIE baselines are numpy), both through
:func:`import_tensorflow`, which keeps its start-up chatter off stderr. Engines never
see documents, run uids or Tiled: they take frames, positions and an :class:`EngineSetup`, and
return numpy :class:`~ptystream.types.Estimate` objects. Everything a caller may ask of an
engine is named by :class:`Engine`.

May import TensorFlow, numpy, scipy, :mod:`ptystream.types`, :mod:`ptystream.optics` and
:mod:`ptystream.config`; never bluesky, event_model, tiled, dask, :mod:`ptystream.live` or the
store.
"""

from __future__ import annotations

import logging
import os
import re
import select

# TensorFlow's shared library carries SQLite symbols without FTS5. If it is loaded before
# Python's _sqlite3, that module binds to them and tiled's SQLite catalog (the embedded server)
# then fails every write with "no such module: fts5" (HTTP 500). Loading sqlite3 first, here at
# the only gateway to TensorFlow in ptystream, keeps the system SQLite.
import sqlite3  # noqa: F401  (isort: keep before any tensorflow import)
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Protocol

import numpy as np

from ptystream.config import Algorithm, EngineSettings
from ptystream.engine.checkpoint import EngineState
from ptystream.engine.setup import EngineSetup
from ptystream.types import Estimate

__all__ = [
    "Engine",
    "EngineSetup",
    "EngineState",
    "configure_tensorflow",
    "import_tensorflow",
    "make_engine",
    "prepare",
]

logger = logging.getLogger(__name__)


class Engine(Protocol):
    """What callers may ask of a streaming reconstruction engine (the AD engine and the ePIE
    and mPIE baselines all have it)."""

    @property
    def n_frames(self) -> int:
        """Frames added so far."""

    @property
    def frames_waiting(self) -> int:
        """Frames added but not yet in any optimiser step (each step takes them first)."""

    @property
    def iteration(self) -> int:
        """Optimiser steps (AD) or position updates (PIE) taken so far."""

    def warm_up(self) -> None:
        """Compile for the current shapes, so the first real step does not stall."""

    def add_frames(self, patterns: np.ndarray, positions: np.ndarray, *, unit: str = "m") -> None:
        """Append frames ``(k, N, N)`` (counts; far field: centred diffraction patterns, near
        field: images) taken at probe positions ``(k, 2)`` (y, x in metres, or with
        ``unit="px"`` in object pixels from the stage origin)."""

    def step(self, n_steps: int) -> float:
        """Run ``n_steps`` bounded optimiser steps; return their mean loss."""

    def refine(
        self,
        epochs: int | None = None,
        on_epoch: Callable[[int, float], None] | None = None,
        *,
        seconds: float | None = None,
    ) -> float:
        """Run ``epochs`` passes over every frame seen, or passes until ``seconds`` of wall time
        are spent (:class:`~ptystream.engine.schedule.PassBudget`); return the last pass's mean
        loss. ``on_epoch(i, loss)`` is called after each pass."""

    def estimate(self, *, final: bool = False) -> Estimate:
        """Snapshot the current object and probe as numpy arrays."""

    def snapshot(self) -> EngineState:
        """The whole state, to continue from later with :meth:`restore`."""

    def restore(self, state: EngineState, *, source: str = "state") -> None:
        """Continue from a :meth:`snapshot` of an engine with the same geometry and settings
        (ValueError naming what differs otherwise; ``source`` names where it came from)."""

    def save_state(self, path: str | Path) -> None:
        """Write the whole state to ``path`` (atomically)."""

    def load_state(self, path: str | Path) -> None:
        """Continue from a state written by :meth:`save_state`."""

    def search_distance(
        self, lo_m: float, hi_m: float, passes: int = 25
    ) -> tuple[float, dict[float, float]]:
        """Near field: set the propagation distance to the best in ``[lo_m, hi_m]`` (metres)
        and return it with every trial's score; ValueError where the engine cannot."""


def configure_tensorflow(threads: int) -> None:
    """Import TensorFlow and pin its thread pools (call before the first TensorFlow op).

    One intra-op thread leaves the other core of a 2-core machine to ingest and publishing;
    TensorFlow used one core for this workload whatever the setting (ENGINE_NOTES).
    """
    tf = import_tensorflow()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        logger.debug("TensorFlow already initialised; thread pools left as they are")


#: What TensorFlow's C++ side writes to file descriptor 2 while it is imported, before its own
#: log level applies: absl's "WARNING: All log messages before absl::InitializeLog() ..." banner
#: and INFO/WARNING lines such as oneDNN's "I0000 ... port.cc:153] oneDNN custom operations are
#: on ...". Errors (``E``/``F`` lines) and everything else pass.
_TF_IMPORT_CHATTER = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|[IW]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] "
)
_IMPORT_LOCK = threading.Lock()  # one redirection of fd 2 at a time (not configuration)


def import_tensorflow() -> ModuleType:
    """``import tensorflow``, without its import-time chatter when ``TF_CPP_MIN_LOG_LEVEL`` is
    2 or more (as the ``ptystream`` commands set it unless ``-v``).

    TensorFlow writes two banners (absl's "All log messages before absl::InitializeLog()" and
    oneDNN's "custom operations are on") straight to file descriptor 2 while it is imported,
    before ``TF_CPP_MIN_LOG_LEVEL`` takes effect. For the import only, fd 2 is pointed at a
    pipe and a thread copies every line back to the real stderr except those
    (:data:`_TF_IMPORT_CHATTER`), so what other threads log meanwhile (``serve``'s delivery
    thread, a progress bar) still arrives, in order. Below level 2, or where fd 2 cannot be
    redirected, it is a plain import.
    """
    if "tensorflow" not in sys.modules and _quiet_wanted():
        with _IMPORT_LOCK:
            if "tensorflow" not in sys.modules:  # not imported by another thread meanwhile
                _import_filtered()
    import tensorflow as tf

    return tf


def _import_filtered() -> None:
    """Import TensorFlow with fd 2 pointed at a pipe that :func:`_forward_lines` filters."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no fd 2 (a daemon), or no sys.stderr
        return
    read_end, write_end = os.pipe()
    forwarder = threading.Thread(
        target=_forward_lines, args=(read_end, saved), name="tf-import-stderr", daemon=True
    )
    forwarder.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        import tensorflow  # noqa: F401
    finally:
        _flush_quietly()
        os.dup2(saved, 2)  # the pipe closes once no process holds it: the forwarder ends
        # A child process started meanwhile may hold the pipe: its lines keep flowing through
        # the forwarder, and the import does not wait for it.
        forwarder.join(timeout=1.0)


def _quiet_wanted() -> bool:
    """True when ``TF_CPP_MIN_LOG_LEVEL`` asks for no INFO and WARNING lines (2 or more), on
    POSIX (the filter needs ``select`` on a pipe)."""
    if os.name != "posix":
        return False
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")) >= 2
    except ValueError:
        return False


def _flush_quietly() -> None:
    try:
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


def _forward_lines(read_end: int, out: int) -> None:
    """Copy what arrives on ``read_end`` to ``out`` line by line, leaving out TensorFlow's
    import chatter; a partial line (a progress bar's ``\\r`` update) goes out after 0.2 s
    idle. Reads to the end of the pipe even if ``out`` fails (so no writer ever blocks on a
    full pipe), then closes both descriptors."""
    pending = b""
    sink = _Sink(out)
    try:
        while True:
            readable, _, _ = select.select([read_end], [], [], 0.2)
            if not readable:
                if pending and not _TF_IMPORT_CHATTER.match(pending):
                    sink.write(pending)
                    pending = b""
                continue
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if not _TF_IMPORT_CHATTER.match(line):
                    sink.write(line + b"\n")
        if pending and not _TF_IMPORT_CHATTER.match(pending):
            sink.write(pending)
    finally:
        os.close(read_end)
        os.close(out)


class _Sink:
    """Writes whole byte strings to a descriptor; after a failure (the real stderr is gone),
    drops the rest."""

    def __init__(self, fd: int):
        self._fd = fd
        self._broken = False

    def write(self, data: bytes) -> None:
        while data and not self._broken:
            try:
                data = data[os.write(self._fd, data) :]
            except OSError:
                self._broken = True


def prepare(settings: EngineSettings) -> None:
    """Set up what ``settings``' engine needs before its first run: TensorFlow for ``ad``
    (:func:`configure_tensorflow`), nothing for the numpy baselines, which never import it."""
    if Algorithm(settings.algorithm) is Algorithm.AD:
        configure_tensorflow(settings.tf_threads)


def make_engine(setup: EngineSetup) -> Engine:
    """Build the engine ``setup.settings.algorithm`` names for one run: ``ad``, the AD engine
    (imports TensorFlow), or ``epie`` / ``mpie``, the numpy baselines of
    :mod:`ptystream.engine.pie` (never import TensorFlow)."""
    if Algorithm(setup.settings.algorithm) is Algorithm.AD:
        import_tensorflow()  # quietly, when no configure_tensorflow came first
        from ptystream.engine.ad import ADEngine

        return ADEngine(setup)
    from ptystream.engine.pie import PIEEngine

    return PIEEngine(setup)

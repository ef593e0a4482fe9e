"""Reconstruction engines: the only package that imports TensorFlow.

Importing this package is cheap; TensorFlow is imported by :func:`configure_tensorflow` and by
:func:`make_engine` for the AD engine only (the ePIE and mPIE baselines are numpy). Engines never
see documents, run uids or Tiled: they take frames, positions and an :class:`EngineSetup`, and
return numpy :class:`~ptystream.types.Estimate` objects. Everything a caller may ask of an
engine is named by :class:`Engine`.

May import TensorFlow, numpy, scipy, :mod:`ptystream.types`, :mod:`ptystream.optics` and
:mod:`ptystream.config`; never bluesky, event_model, tiled, dask, :mod:`ptystream.live` or the
store.
"""

from __future__ import annotations

import logging

# TensorFlow's shared library carries SQLite symbols without FTS5. If it is loaded before
# Python's _sqlite3, that module binds to them and tiled's SQLite catalog (the embedded server)
# then fails every write with "no such module: fts5" (HTTP 500). Loading sqlite3 first, here at
# the only gateway to TensorFlow in ptystream, keeps the system SQLite.
import sqlite3  # noqa: F401  (isort: keep before any tensorflow import)
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from ptystream.config import Algorithm, EngineSettings
from ptystream.engine.checkpoint import EngineState
from ptystream.engine.setup import EngineSetup
from ptystream.types import Estimate

__all__ = ["Engine", "EngineSetup", "EngineState", "configure_tensorflow", "make_engine", "prepare"]

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
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        logger.debug("TensorFlow already initialised; thread pools left as they are")


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
        from ptystream.engine.ad import ADEngine

        return ADEngine(setup)
    from ptystream.engine.pie import PIEEngine

    return PIEEngine(setup)

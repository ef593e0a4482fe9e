"""What became of one live run: status, final estimate, frame accounting and timings."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptystream.live.pairing import Accounting, MissingFrames
from ptystream.types import Estimate, RunStart

__all__ = ["RunResult"]


@dataclass
class RunResult:
    """What became of one run: its status, final estimate and bookkeeping."""

    start: RunStart
    status: str = "running"
    node_path: str | None = None
    final: Estimate | None = None
    accounting: Accounting = field(default_factory=Accounting)
    timings_s: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    spooled: Path | None = None
    checkpoint: Path | None = None
    spilled_frames: int = 0
    initial_probe_from: str | None = None
    recent_frame: np.ndarray | None = field(default=None, repr=False)
    """The last frame the engine was given (counts, pre-processed), for the dashboard."""
    preprocess: dict[str, Any] | None = None
    """What the detector pre-processing did (:meth:`ptystream.preprocess.Preprocessor.report`)."""
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def run_uid(self) -> str:
        return self.start.run_uid

    @property
    def missing(self) -> MissingFrames | None:
        """The frames this run should have had but never received, once its intake is over
        (None: none missing, or not known yet). ``missing.seq_nums()`` are what a backfill
        from the raw run would read; the run is then not a clean ``finished``."""
        missing = self.accounting.missing
        return missing if missing is not None and missing.count else None

    def summary(self) -> dict[str, Any]:
        """The run's bookkeeping for its published metadata."""
        frames = {**self.accounting.as_dict(), "spilled_to_disk": self.spilled_frames}
        out: dict[str, Any] = {"frames": frames, "timings_s": self.timings_s}
        if self.checkpoint is not None:
            out["checkpoint"] = str(self.checkpoint)
        if self.initial_probe_from:
            out["initial_probe_from"] = self.initial_probe_from
        if self.preprocess is not None:
            out["preprocess"] = self.preprocess
        if self.start.geometry is not None:
            out["geometry"] = self.start.geometry.describe()
        if self.error:
            out["reason"] = self.error
        return out

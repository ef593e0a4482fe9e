"""An engine's state as one value, and to and from a file.

The state is every array of the engine (variables, optimiser moments, frames, windows) plus its
bookkeeping (normalisation, canvas, pending frames, loss history, random generator), so that a
restored engine takes exactly the steps the saved one would have taken. Engines make and take
the value (``snapshot()`` and ``restore()``, :class:`ptystream.engine.Engine`); this module
knows no engine: it writes and reads the value and checks that a state belongs to the engine
that takes it (same geometry and settings). numpy only.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptystream.config import EngineSettings
from ptystream.types import Geometry

__all__ = ["EngineState", "identity", "read_state", "write_state"]

_FORMAT = 1
_META = "meta_json"


@dataclass(frozen=True)
class EngineState:
    """A snapshot of an engine: ``arrays`` by name (numpy copies) and ``meta``, JSON-able
    bookkeeping that includes the engine's :func:`identity`."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]

    def check(self, geometry: Geometry, settings: EngineSettings, source: str = "state") -> None:
        """Raise ValueError naming what differs when the state was taken with another
        geometry or other settings (``source`` names where it came from)."""
        if self.meta.get("format") != _FORMAT:
            raise ValueError(f"{source}: unknown engine-state format {self.meta.get('format')!r}")
        mine = identity(geometry, settings)
        # a state saved before a setting existed took its default
        saved_settings = EngineSettings.model_validate(self.meta["settings"])
        saved = {**self.meta, "settings": saved_settings.model_dump(mode="json")}
        for key in ("geometry", "settings"):
            if saved[key] != mine[key]:
                differ = sorted(k for k in mine[key] if mine[key][k] != saved[key].get(k))
                raise ValueError(f"{source}: saved with a different {key} ({', '.join(differ)})")


def identity(geometry: Geometry, settings: EngineSettings) -> dict[str, Any]:
    """What must match between the engine that saves a state and the one that restores it."""
    return {
        "format": _FORMAT,
        "geometry": dataclasses.asdict(geometry),
        "settings": settings.model_dump(mode="json"),
    }


def write_state(state: EngineState, path: str | Path) -> None:
    """Write ``state`` to ``path`` (NPZ) atomically: a temporary file renamed over it, so a
    crash leaves the previous file or none, never half of one."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        np.savez(f, **state.arrays, **{_META: np.asarray(json.dumps(state.meta))})
        f.flush()
        os.fsync(f.fileno())
    partial.replace(path)


def read_state(path: str | Path) -> EngineState:
    """The state :func:`write_state` wrote to ``path``."""
    with np.load(path) as data:
        meta = json.loads(str(data[_META]))
        arrays = {name: data[name] for name in data.files if name != _META}
    return EngineState(arrays, meta)

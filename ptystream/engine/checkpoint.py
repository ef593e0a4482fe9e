"""Engine state to and from a file: every variable, optimiser moment and frame, plus the
bookkeeping (normalisation, canvas, pending frames, random generator), so that a restored
engine takes exactly the steps the saved one would have taken."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from ptystream.engine.ad import ADEngine
from ptystream.engine.canvas import Canvas

__all__ = ["load_state", "restore", "save_state", "snapshot"]

_FORMAT = 1

#: Every tf.Variable of the engine's state, by checkpoint name: its attribute path in the engine.
STATE_VARIABLES: dict[str, tuple] = {
    "object_re": ("_obj_re",),
    "object_im": ("_obj_im",),
    "object_count": ("_obj_count",),
    "object_m_re": ("_obj_adam", 0, "m"),
    "object_v_re": ("_obj_adam", 0, "v"),
    "object_m_im": ("_obj_adam", 1, "m"),
    "object_v_im": ("_obj_adam", 1, "v"),
    "probe_re": ("_probe_re",),
    "probe_im": ("_probe_im",),
    "probe_count": ("_probe_count",),
    "probe_m_re": ("_probe_adam", 0, "m"),
    "probe_v_re": ("_probe_adam", 0, "v"),
    "probe_m_im": ("_probe_adam", 1, "m"),
    "probe_v_im": ("_probe_adam", 1, "v"),
    "distance": ("_distance",),
    "distance_count": ("_distance_count",),
    "distance_m": ("_distance_adam", "m"),
    "distance_v": ("_distance_adam", "v"),
    "offset": ("_offset",),
    "frames": ("_frames",),
    "top_left": ("_top_left",),
    "frac": ("_frac",),
    "shift": ("_shift",),
    "shift_count": ("_shift_count",),
    "shift_m": ("_shift_adam", "m"),
    "shift_v": ("_shift_adam", "v"),
    "n_frames": ("_n_var",),
}


def _resolve(engine: ADEngine, path: tuple) -> tuple[Any, Any]:
    """(owner, key) of the attribute at ``path``: a name, or an index into a tuple."""
    owner: Any = engine
    for step in path[:-1]:
        owner = owner[step] if isinstance(step, int) else getattr(owner, step)
    return owner, path[-1]


def _identity(engine: ADEngine) -> dict[str, Any]:
    """What must match between the saving and the restoring engine."""
    return {
        "geometry": dataclasses.asdict(engine.geometry),
        "settings": engine.settings.model_dump(mode="json"),
    }


def snapshot(engine: ADEngine) -> dict[str, Any]:
    """The whole state in memory (numpy copies), for :func:`restore` on the same engine."""
    return {
        "arrays": {
            name: getattr(*_resolve(engine, attr)).numpy() for name, attr in STATE_VARIABLES.items()
        },
        "positions_m": engine._positions_m.copy(),
        "loss": list(engine._loss),
        "pending": list(engine._pending),
        "iteration": engine._iteration,
        "rng": engine._rng.bit_generator.state,
    }


def restore(engine: ADEngine, state: dict[str, Any]) -> None:
    """Put the engine back to a :func:`snapshot` of itself (same shapes: no recompile)."""
    for name, attr in STATE_VARIABLES.items():
        getattr(*_resolve(engine, attr)).assign(state["arrays"][name])
    engine._positions_m = state["positions_m"].copy()
    engine._loss = list(state["loss"])
    engine._pending.clear()
    engine._pending.extend(state["pending"])
    engine._iteration = state["iteration"]
    engine._rng.bit_generator.state = state["rng"]


def save_state(engine: ADEngine, path: str | Path) -> None:
    arrays = {}
    for name, attr in STATE_VARIABLES.items():
        owner, key = _resolve(engine, attr)
        arrays[name] = getattr(owner, key).numpy()
    canvas = engine._canvas
    meta = {
        "format": _FORMAT,
        **_identity(engine),
        "scale": engine._scale,
        "n_frames": engine._n_frames,
        "pending": [int(i) for i in engine._pending],
        "iteration": engine._iteration,
        "canvas_shape": [int(v) for v in canvas.shape] if canvas else None,
        "canvas_origin_m": canvas.origin_m.tolist() if canvas else None,
        "rng": engine._rng.bit_generator.state,
    }
    with open(path, "wb") as f:
        np.savez(
            f,
            **arrays,
            positions_m=engine._positions_m,
            loss=np.asarray(engine._loss, dtype=np.float64).reshape(-1, 2),
            meta_json=np.asarray(json.dumps(meta)),
        )


def load_state(engine: ADEngine, path: str | Path) -> None:
    with np.load(path) as data:
        meta = json.loads(str(data["meta_json"]))
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path}: unknown engine-state format {meta.get('format')!r}")
        mine = _identity(engine)
        for key in ("geometry", "settings"):
            if meta[key] != mine[key]:
                differ = sorted(k for k in mine[key] if mine[key][k] != meta[key].get(k))
                raise ValueError(f"{path}: saved with a different {key} ({', '.join(differ)})")
        for name, attr in STATE_VARIABLES.items():
            owner, key = _resolve(engine, attr)
            old = getattr(owner, key)
            setattr(owner, key, tf.Variable(data[name], trainable=old.trainable))
        engine._positions_m = data["positions_m"]
        engine._loss = [(int(i), float(v)) for i, v in data["loss"]]
    engine._scale = meta["scale"]
    engine._n_frames = meta["n_frames"]
    engine._pending.clear()
    engine._pending.extend(meta["pending"])
    engine._iteration = meta["iteration"]
    if meta["canvas_shape"] is not None:
        engine._canvas = Canvas(tuple(meta["canvas_shape"]), np.asarray(meta["canvas_origin_m"]))
    engine._rng.bit_generator.state = meta["rng"]
    engine._step_fn = engine._compile()

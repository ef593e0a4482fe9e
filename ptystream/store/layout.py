"""The Tiled layout of ptystream, in one place (DESIGN.md, "The Tiled layout")::

    <root>/raw/<run uid>/...                          bluesky's TiledWriter (the raw scan)
    <root>/processed/ptystream/<run uid>/             one container per live reconstruction
        live/, final/                                 (:mod:`ptystream.store.publisher`)
        reprocessed/v1, v2, ...                       (:mod:`ptystream.store.versions`)

and the small helpers every writer of it uses: walking a path, creating a container when it
is missing, JSON-safe metadata, timestamps; and what an estimate is written as: the float32
views and overlays of ``live/`` (:func:`views`, :func:`overlays`, :func:`diffraction_view`),
``final/``'s arrays and loss table.

A run container's ``status`` is ``running`` until the run ends, then one of
:data:`ENDED_STATUSES`; its ``frames`` (also in ``live/``'s metadata, updated during the run)
count ``received``, ``used``, ``rejected`` (by reason), ``duplicates_ignored`` and
``spilled_to_disk``, and, only when frames never arrived, ``missing``: ``{"count": 35,
"seq_nums": "41-75,80", "expected": 150, "source": "stop num_events"}`` (inclusive seq_num
ranges, the first 100 of them; ``source`` says how ``expected`` is known: ``stop num_events``,
``plan n_points`` or, during a run, ``seq_num gaps`` below the highest seq_num received).
"""

from __future__ import annotations

import datetime
from typing import Any

import numpy as np

from ptystream.io.figures import scanned_area, without_phase_ramp
from ptystream.types import Estimate

__all__ = [
    "ENDED_STATUSES",
    "PROCESSED_PATH",
    "RAW_KEY",
    "REPROCESSED_KEY",
    "child",
    "diffraction_view",
    "exists",
    "final_arrays",
    "final_loss",
    "jsonable",
    "mark_ended",
    "node_at",
    "overlays",
    "quality_metadata",
    "now",
    "raw_catalog",
    "views",
]

#: Container (under the root) where bluesky's TiledWriter saves raw runs.
RAW_KEY = "raw"
#: Where reconstructions live under the root.
PROCESSED_PATH = ("processed", "ptystream")
#: The container of a run's reprocessed versions, inside the run's container.
REPROCESSED_KEY = "reprocessed"
#: The statuses of an ended reconstruction: ``finished`` (every expected frame arrived and was
#: accounted for), ``incomplete`` (frames missing, or the run ended without its stop or by a
#: shutdown; ``reason`` says which), ``aborted`` and ``failed`` (``reason`` says why).
ENDED_STATUSES = ("finished", "incomplete", "aborted", "failed")


def now() -> str:
    """The current UTC time, ISO 8601 (the timestamps of published metadata)."""
    return datetime.datetime.now(datetime.UTC).isoformat()


def child(parent, key: str, metadata: dict[str, Any] | None = None):
    """``parent[key]``, created as a container (with ``metadata``) if missing."""
    if key in parent:
        return parent[key]
    return parent.create_container(key, metadata=metadata or {})


def node_at(root, path: str):
    """The node at ``path`` (``a/b/c``) under ``root``; KeyError when a part is missing."""
    node = root
    for key in path.split("/"):
        node = node[key]
    return node


def exists(root, path: str) -> bool:
    """Whether ``path`` (``a/b/c``) exists under ``root``."""
    node = root
    for key in path.split("/"):
        if key not in node:
            return False
        node = node[key]
    return True


def jsonable(value: Any) -> Any:
    """Metadata that JSON (and tiled) can take: numpy scalars and arrays to Python, tuples to
    lists."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def raw_catalog(root):
    """The ``raw`` container, a ``CatalogOfBlueskyRuns`` so runs can be looked up by scan id."""
    from tiled.structures.core import Spec

    if RAW_KEY in root:
        return root[RAW_KEY]
    return root.create_container(RAW_KEY, specs=[Spec("CatalogOfBlueskyRuns", version="3.0")])


def quality_metadata(estimate: Estimate) -> dict[str, Any]:
    """``noise`` (the noise model the engine fitted and used), ``training`` (the pass kept, an
    early stop, restarts after a divergence), ``probe_defocus_m`` (the initial probe's defocus,
    chosen by the search, in metres), ``orientation`` (the check of the positions' axes) and
    ``warnings`` (what may make the result wrong,
    shown on the dashboard), for the run's and the live metadata; only what the engine
    reported."""
    out: dict[str, Any] = {}
    warnings = list(estimate.warnings)
    if estimate.noise:
        out["noise"] = dict(estimate.noise)
        warnings = list(estimate.noise.get("warnings", [])) + warnings
    if estimate.training:
        out["training"] = dict(estimate.training)
    if np.isfinite(estimate.probe_defocus_m):
        out["probe_defocus_m"] = float(estimate.probe_defocus_m)
    if estimate.orientation:
        out["orientation"] = dict(estimate.orientation)
        warnings += list(estimate.orientation.get("warnings", []))
    if out or warnings:
        out["warnings"] = warnings
    return out


def _scanned(estimate: Estimate) -> np.ndarray:
    """The scanned area of the object's canvas (all of it when the illumination does not
    match the canvas)."""
    shape = estimate.object.shape[-2:]
    if np.shape(estimate.illumination) != shape:
        return np.ones(shape, bool)
    return scanned_area(estimate.illumination)


def views(estimate: Estimate) -> dict[str, np.ndarray]:
    """The float32 images of ``live/``. A mixed-state probe is shown by its total amplitude
    (root of the summed mode intensities) and the phase of its strongest mode. A multislice
    object is shown by the product of its slices (``object_*``, ``(H, W)``) and by its slices
    (``slices_*``, ``(S, H, W)``, the first met by the beam first).
    ``object_phase_ramp_removed`` is the phase of the object (the product) with its global
    phase and linear ramp over the scanned area taken off
    (:func:`~ptystream.io.figures.without_phase_ramp`): a tilt the data cannot fix."""
    probe = estimate.probe
    if probe.ndim == 3:
        probe_amplitude = np.sqrt(np.sum(np.abs(probe) ** 2, axis=0))
        probe_phase = np.angle(probe[0])
    else:
        probe_amplitude, probe_phase = np.abs(probe), np.angle(probe)
    obj = estimate.projected_object
    flat = without_phase_ramp(obj, _scanned(estimate))
    images = {
        "object_amplitude": np.abs(obj).astype(np.float32),
        "object_phase": np.angle(obj).astype(np.float32),
        "object_phase_ramp_removed": np.angle(flat).astype(np.float32),
        "probe_amplitude": probe_amplitude.astype(np.float32),
        "probe_phase": probe_phase.astype(np.float32),
    }
    if estimate.n_slices > 1:
        images["slices_amplitude"] = np.abs(estimate.object).astype(np.float32)
        images["slices_phase"] = np.angle(estimate.object).astype(np.float32)
    return images


def overlays(estimate: Estimate) -> dict[str, np.ndarray]:
    """What ``live/`` shows over the object images: ``scanned`` (uint8 ``(H, W)``, 1 where the
    probe lit the object: illumination above
    :data:`~ptystream.io.figures.SCANNED_FRACTION` of its maximum) and ``positions_m``
    (float64 ``(n, 2)``, the probe positions (y, x) of the frames used so far; absent before
    any frame)."""
    out: dict[str, np.ndarray] = {"scanned": _scanned(estimate).astype(np.uint8)}
    positions = np.asarray(estimate.positions_m, np.float64).reshape(-1, 2)
    if len(positions):
        out["positions_m"] = positions
    return out


def diffraction_view(frame: np.ndarray) -> np.ndarray:
    """A frame as ``live/diffraction``: float32 counts, non-finite pixels as 0."""
    frame = np.asarray(frame, np.float32)
    if frame.ndim != 2:
        raise ValueError(f"a diffraction frame is 2-D, not {frame.shape}")
    return np.where(np.isfinite(frame), frame, np.float32(0))


def final_arrays(estimate: Estimate) -> list[tuple[str, np.ndarray, dict[str, Any]]]:
    """``final/``'s arrays as ``(key, array, metadata)``: object and probe (complex64, the
    object ``(H, W)``, or ``(S, H, W)`` slices with their gaps, with its origin and pixel
    size), positions_m (float64)."""
    placed = {
        "object_origin_m": list(estimate.object_origin_m),
        "pixel_size_m": estimate.pixel_size_m,
    }
    if estimate.n_slices > 1:
        placed |= {"slices": estimate.n_slices, "slice_gaps_m": list(estimate.slice_gaps_m)}
    return [
        ("object", estimate.object.astype(np.complex64), placed),
        ("probe", estimate.probe.astype(np.complex64), {}),
        ("positions_m", estimate.positions_m.astype(np.float64), {}),
    ]


def final_loss(estimate: Estimate):
    """``final/loss`` as a pandas DataFrame: the finite rows of the loss history (iteration,
    loss)."""
    import pandas as pd

    rows = estimate.loss[np.isfinite(estimate.loss[:, 1])]
    return pd.DataFrame({"iteration": rows[:, 0].astype(np.int64), "loss": rows[:, 1]})


def mark_ended(node, status: str, extra: dict[str, Any]) -> None:
    """Set a container's ``status`` and bookkeeping (``extra``), with its finish time."""
    timings = dict(node.metadata.get("timings", {}))
    timings["finished_at"] = now()
    node.update_metadata(jsonable({"status": status, "timings": timings, **extra}))

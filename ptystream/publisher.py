"""Estimates to Tiled, in the layout of DESIGN.md. Knows tiled.client and types, nothing else.

::

    <root>/processed/ptystream/<run uid>/     metadata: run, profile, geometry, engine, status ...
        live/object_amplitude, object_phase, probe_amplitude, probe_phase    float32, overwritten
        final/object, final/probe (complex64), final/positions_m, final/loss (table)

The float32 amplitude/phase views exist because image renderers cannot decode complex data.
Each is a single chunk (arrays under 100 MB are not chunked), so a reader never sees a torn
image. Non-finite estimates are refused.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ptystream import __version__
from ptystream.types import Estimate, RunStart

__all__ = ["PROCESSED_PATH", "NonFiniteEstimate", "TiledPublisher", "load_spooled", "spool_final"]

logger = logging.getLogger(__name__)

#: Where reconstructions live under the Tiled root.
PROCESSED_PATH = ("processed", "ptystream")


class NonFiniteEstimate(ValueError):
    """An estimate with NaN or infinite values; it is never published."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def _jsonable(value: Any) -> Any:
    """Metadata that tiled can serialise: numpy scalars and arrays to Python, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _child(parent, key: str, metadata: dict[str, Any] | None = None):
    """``parent[key]``, created as a container if missing."""
    if key in parent:
        return parent[key]
    return parent.create_container(key, metadata=metadata or {})


def _views(estimate: Estimate) -> dict[str, np.ndarray]:
    return {
        "object_amplitude": np.abs(estimate.object).astype(np.float32),
        "object_phase": np.angle(estimate.object).astype(np.float32),
        "probe_amplitude": np.abs(estimate.probe).astype(np.float32),
        "probe_phase": np.angle(estimate.probe).astype(np.float32),
    }


class TiledPublisher:
    """Writes one container per reconstructed run under ``processed/ptystream``.

    Calls are synchronous and may raise (server down, wrong key): the pipeline's publisher
    thread owns retries and cadence, so nothing here sleeps.

    Parameters
    ----------
    root : a writable tiled client container (the server's root).
    """

    def __init__(self, root):
        self._root = root
        self._processed = None
        self._runs: dict[str, Any] = {}

    @classmethod
    def from_uri(cls, uri: str, *, api_key: str | None = None) -> TiledPublisher:
        """Connect to a Tiled server (the key is never logged)."""
        from tiled.client import from_uri

        return cls(from_uri(uri, api_key=api_key))

    def _processed_node(self):
        if self._processed is None:
            node = self._root
            for key in PROCESSED_PATH:
                node = _child(node, key)
            self._processed = node
        return self._processed

    def begin_run(self, start: RunStart, settings: dict[str, Any]) -> str:
        """Create the run's container (status 'running'); returns its path under the root.

        A second reconstruction of the same run gets the key ``<uid>-2``, ``<uid>-3``, ...
        """
        processed = self._processed_node()
        key, n = start.run_uid, 1
        while key in processed:
            n += 1
            key = f"{start.run_uid}-{n}"
        g = start.geometry
        metadata = {
            "raw_uid": start.run_uid,
            "scan_id": start.scan_id,
            "profile": start.profile,
            "geometry": {
                "wavelength_m": g.wavelength_m,
                "distance_m": g.distance_m,
                "detector_pixel_size_m": g.detector_pixel_size_m,
                "frame_px": g.frame_px,
                "object_pixel_size_m": g.object_pixel_size_m,
            },
            "plan": {"n_points": start.plan.n_points, "extent_m": start.plan.extent_m},
            "engine": settings,
            "status": "running",
            "version": __version__,
            "timings": {"started_at": _now()},
        }
        node = processed.create_container(key, metadata=_jsonable(metadata))
        node.create_container("live")
        self._runs[start.run_uid] = node
        return "/".join((*PROCESSED_PATH, key))

    def publish_live(self, run_uid: str, estimate: Estimate) -> None:
        """Overwrite ``live/`` with the estimate's amplitude and phase views and progress."""
        self._check_finite(estimate)
        live = self._runs[run_uid]["live"]
        for key, array in _views(estimate).items():
            self._overwrite(live, key, array)
        live.update_metadata(
            {
                "iteration": estimate.iteration,
                "frames_used": estimate.n_frames,
                "frames_waiting": estimate.frames_waiting,
                "loss": estimate.last_loss,
                "object_origin_m": list(estimate.object_origin_m),
                "pixel_size_m": estimate.pixel_size_m,
                **({"distance_m": estimate.distance_m} if np.isfinite(estimate.distance_m) else {}),
                "updated_at": _now(),
            },
            drop_revision=True,
        )

    def publish_final(
        self, run_uid: str, estimate: Estimate, status: str, extra: dict[str, Any]
    ) -> None:
        """Write ``final/``, refresh ``live/`` and set the run's status and bookkeeping."""
        self._check_finite(estimate)
        node = self._runs[run_uid]
        self.publish_live(run_uid, estimate)
        final = _child(node, "final")
        meta = {
            "object_origin_m": list(estimate.object_origin_m),
            "pixel_size_m": estimate.pixel_size_m,
        }
        self._overwrite(final, "object", estimate.object.astype(np.complex64), meta)
        self._overwrite(final, "probe", estimate.probe.astype(np.complex64))
        self._overwrite(final, "positions_m", estimate.positions_m.astype(np.float64))
        if "loss" in final:
            final.delete_contents("loss", external_only=False)
        loss = pd.DataFrame(
            {"iteration": estimate.loss[:, 0].astype(np.int64), "loss": estimate.loss[:, 1]}
        )
        final.write_table(loss, key="loss")
        timings = dict(node.metadata.get("timings", {}))
        timings["finished_at"] = _now()
        node.update_metadata(
            _jsonable(
                {
                    "status": status,
                    "timings": timings,
                    "iterations": estimate.iteration,
                    "frames_used": estimate.n_frames,
                    "frames_waiting": estimate.frames_waiting,
                    **extra,
                }
            )
        )

    def mark(self, run_uid: str, status: str, extra: dict[str, Any]) -> None:
        """Set the status of a run that ends without a final estimate (e.g. no frames)."""
        self._runs[run_uid].update_metadata(_jsonable({"status": status, **extra}))

    @staticmethod
    def _check_finite(estimate: Estimate) -> None:
        if not estimate.is_finite():
            raise NonFiniteEstimate(
                f"estimate at iteration {estimate.iteration} has non-finite values; not published"
            )

    @staticmethod
    def _overwrite(parent, key: str, array: np.ndarray, metadata: dict | None = None) -> None:
        """Write ``array`` at ``key``: in place when shape and dtype match, else replaced."""
        if key in parent:
            node = parent[key]
            if tuple(node.shape) == array.shape and node.dtype == array.dtype:
                node.write(array)
                if metadata:
                    node.update_metadata(metadata, drop_revision=True)
                return
            parent.delete_contents(key, external_only=False)
        parent.write_array(array, key=key, metadata=metadata or {})


def spool_final(
    directory: str | Path, run_uid: str, estimate: Estimate, metadata: dict[str, Any]
) -> Path:
    """Keep a final estimate on disk (``<run uid>.npz``) when Tiled cannot take it.

    Every field of the :class:`Estimate` is stored, plus ``metadata`` as JSON, so the result can
    be uploaded later without loss (see :func:`load_spooled`).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{run_uid}.npz"
    fields = {f.name: np.asarray(getattr(estimate, f.name)) for f in dataclasses.fields(estimate)}
    np.savez(path, **fields, metadata_json=np.asarray(json.dumps(_jsonable(metadata))))
    return path


def load_spooled(path: str | Path) -> tuple[Estimate, dict[str, Any]]:
    """Read back what :func:`spool_final` wrote."""
    with np.load(path) as data:
        metadata = json.loads(str(data["metadata_json"]))
        values = {}
        for f in dataclasses.fields(Estimate):
            value = data[f.name]
            values[f.name] = value.item() if value.ndim == 0 else value
        values["object_origin_m"] = tuple(float(v) for v in values["object_origin_m"])
    return Estimate(**values), metadata

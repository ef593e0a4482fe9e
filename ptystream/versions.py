"""Reprocessed versions of a run in Tiled, next to (never over) the live result.
::

    <root>/processed/ptystream/<run uid>/            the live run's container (created, with
                                                     status "not reconstructed live", if the run
                                                     never was); metadata gains latest_reprocess
        reprocessed/v1, v2, ...                      one container per reprocessing
            metadata: kind "reprocess", version, status (running -> finished/failed), reason,
                      settings_hash, provenance {software_version, profile, settings, input},
                      timings {started_at, finished_at}, timings_s, frames, iterations,
                      final_loss
            final/object, final/probe (complex64), final/positions_m (float64), final/loss (table)

A version is identified by its ``settings_hash`` (profile, engine settings and passes): a rerun
with the same hash finds the finished version and skips it unless forced, in which case the
next number is used and nothing earlier is touched. Knows tiled.client and types, nothing else.
"""

from __future__ import annotations

import datetime
from typing import Any

import numpy as np
import pandas as pd

from ptystream.publisher import PROCESSED_PATH
from ptystream.spool import jsonable
from ptystream.types import Estimate

__all__ = [
    "PROCESSED_PATH",
    "REPROCESSED_KEY",
    "create_version",
    "find_version",
    "finish_version",
    "write_final",
]

#: The container of a run's reprocessed versions.
REPROCESSED_KEY = "reprocessed"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def _child(parent, key: str, metadata: dict[str, Any] | None = None):
    """``parent[key]``, created as a container (with ``metadata``) if missing."""
    if key in parent:
        return parent[key]
    return parent.create_container(key, metadata=metadata or {})


def _run_node(root, run_uid: str, scan_id: int | None):
    node = root
    for key in PROCESSED_PATH:
        node = _child(node, key)
    return _child(
        node,
        run_uid,
        {"raw_uid": run_uid, "scan_id": scan_id, "status": "not reconstructed live"},
    )


def find_version(root, run_uid: str, settings_hash: str) -> tuple[str, dict[str, Any]] | None:
    """The path and metadata of ``run_uid``'s finished version with ``settings_hash``, if
    one exists (the latest such)."""
    node = root
    for key in (*PROCESSED_PATH, run_uid, REPROCESSED_KEY):
        if key not in node:
            return None
        node = node[key]
    found = None
    for key, version in node.items():
        md = version.metadata
        if md.get("settings_hash") == settings_hash and md.get("status") == "finished":
            found = ("/".join((*PROCESSED_PATH, run_uid, REPROCESSED_KEY, key)), dict(md))
    return found


def create_version(
    root, run_uid: str, scan_id: int | None, metadata: dict[str, Any]
) -> tuple[str, Any]:
    """Create the next version ``v<n>`` of ``run_uid`` with ``metadata`` and status
    ``running``; returns its path under the root and its node."""
    versions = _child(_run_node(root, run_uid, scan_id), REPROCESSED_KEY)
    n = len(versions) + 1
    while True:
        key = f"v{n}"
        if key not in versions:
            md = jsonable({**metadata, "version": key, "status": "running"})
            md["timings"] = {"started_at": _now()}
            try:
                node = versions.create_container(key, metadata=md)
                break
            except Exception:
                if key not in versions:  # not a lost race with another worker: a real error
                    raise
        n += 1
    return "/".join((*PROCESSED_PATH, run_uid, REPROCESSED_KEY, key)), node


def write_final(node, estimate: Estimate) -> None:
    """Write ``final/`` (object, probe, positions_m, loss) into a fresh container ``node``."""
    if not estimate.is_finite():
        raise ValueError("the estimate has non-finite values; it is not published")
    final = _child(node, "final")
    final.write_array(
        estimate.object.astype(np.complex64),
        key="object",
        metadata={
            "object_origin_m": list(estimate.object_origin_m),
            "pixel_size_m": estimate.pixel_size_m,
        },
    )
    final.write_array(estimate.probe.astype(np.complex64), key="probe")
    final.write_array(estimate.positions_m.astype(np.float64), key="positions_m")
    rows = estimate.loss[np.isfinite(estimate.loss[:, 1])]
    final.write_table(
        pd.DataFrame({"iteration": rows[:, 0].astype(np.int64), "loss": rows[:, 1]}), key="loss"
    )


def finish_version(root, path: str, status: str, extra: dict[str, Any]) -> None:
    """Set a version's status and bookkeeping (``extra``), with its finish time, and record it
    as the run's ``latest_reprocess``."""
    keys = path.split("/")
    node = root
    for key in keys:
        node = node[key]
    timings = dict(node.metadata.get("timings", {}))
    timings["finished_at"] = _now()
    node.update_metadata(jsonable({"status": status, "timings": timings, **extra}))
    run = root
    for key in keys[:-2]:
        run = run[key]
    run.update_metadata({"latest_reprocess": {"version": keys[-1], "status": status, "path": path}})

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

from typing import Any

import numpy as np

from ptystream.store.layout import (
    PROCESSED_PATH,
    REPROCESSED_KEY,
    child,
    final_arrays,
    final_loss,
    jsonable,
    mark_ended,
    node_at,
    now,
)
from ptystream.types import Estimate

__all__ = ["create_version", "find_version", "finish_version", "read_final", "write_final"]


def _run_node(root, run_uid: str, scan_id: int | None):
    node = root
    for key in PROCESSED_PATH:
        node = child(node, key)
    return child(
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
    ``running``, recorded as the run's ``latest_reprocess`` (so readers of the run, the
    dashboard's list, learn of it); returns its path under the root and its node."""
    run = _run_node(root, run_uid, scan_id)
    versions = child(run, REPROCESSED_KEY)
    n = len(versions) + 1
    while True:
        key = f"v{n}"
        if key not in versions:
            md = jsonable({**metadata, "version": key, "status": "running"})
            md["timings"] = {"started_at": now()}
            try:
                node = versions.create_container(key, metadata=md)
                break
            except Exception:
                if key not in versions:  # not a lost race with another worker: a real error
                    raise
        n += 1
    path = "/".join((*PROCESSED_PATH, run_uid, REPROCESSED_KEY, key))
    run.update_metadata({"latest_reprocess": {"version": key, "status": "running", "path": path}})
    return path, node


def write_final(node, estimate: Estimate) -> None:
    """Write ``final/`` (object, probe, positions_m, loss) into a fresh container ``node``."""
    if not estimate.is_finite():
        raise ValueError("the estimate has non-finite values; it is not published")
    final = child(node, "final")
    for key, array, md in final_arrays(estimate):
        final.write_array(array, key=key, metadata=md)
    final.write_table(final_loss(estimate), key="loss")


def finish_version(root, path: str, status: str, extra: dict[str, Any]) -> None:
    """Set a version's status and bookkeeping (``extra``), with its finish time, and record it
    as the run's ``latest_reprocess``."""
    keys = path.split("/")
    mark_ended(node_at(root, path), status, extra)
    run = node_at(root, "/".join(keys[:-2]))
    run.update_metadata({"latest_reprocess": {"version": keys[-1], "status": status, "path": path}})


def read_final(node) -> Estimate:
    """The estimate a run's (or a version's) ``final/`` holds, back from Tiled: object, probe,
    positions, loss history, and the run's noise model, orientation check and warnings from
    ``node``'s metadata; the illumination recomputed from the probe and the positions."""
    from ptystream.io.results import illumination_of

    final = node["final"]
    obj, probe = final["object"].read(), final["probe"].read()
    placed = final["object"].metadata
    positions = final["positions_m"].read()
    origin, dx = np.asarray(placed["object_origin_m"]), float(placed["pixel_size_m"])
    loss = final["loss"].read()
    corners = (positions - origin) / dx - probe.shape[-1] / 2
    md = node.metadata
    return Estimate(
        object=obj,
        probe=probe,
        object_origin_m=(float(origin[0]), float(origin[1])),
        pixel_size_m=dx,
        positions_m=positions,
        illumination=illumination_of(probe, corners, obj.shape[-2:]),
        iteration=int(md.get("iterations", len(loss))),
        n_frames=len(positions),
        loss=np.column_stack([loss["iteration"], loss["loss"]]).astype(np.float64),
        final=True,
        slice_gaps_m=tuple(placed.get("slice_gaps_m", ())),
        noise=md.get("noise"),
        probe_defocus_m=float(md.get("probe_defocus_m", float("nan"))),
        orientation=md.get("orientation"),
        warnings=tuple(w for w in md.get("warnings", ()) if not _from_models(w, md)),
    )


def _from_models(warning: str, md) -> bool:
    """True for a warning the noise model or the orientation check holds (kept there)."""
    held = [
        *(md.get("noise") or {}).get("warnings", ()),
        *(md.get("orientation") or {}).get("warnings", ()),
    ]
    return warning in held

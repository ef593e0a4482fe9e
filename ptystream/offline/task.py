"""One reprocessing task, run on a Dask worker: read the input, reconstruct it with
:func:`ptystream.offline.reconstruct.reconstruct_scan`, write the result (a new version in
Tiled, or an HDF5 file). A task never raises: a failure is a report with status ``failed``."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from ptystream import __version__
from ptystream.offline.jobs import Job, file_result, settings_record
from ptystream.offline.report import THUMBNAIL_PX, Report
from ptystream.store.layout import quality_metadata

__all__ = ["reprocess_one"]

logger = logging.getLogger(__name__)


def reprocess_one(job: Job) -> Report:
    """Reprocess one input; never raises (a failure is a report with status ``failed``)."""
    t0 = time.perf_counter()
    source = job.run_uid or job.path or "?"
    report = Report(job.label, "failed", source, job.scan_id)
    try:
        if job.run_uid is not None:
            _from_tiled(job, report)
        else:
            _from_file(job, report)
        report.status = "finished"
    except Exception as exc:  # isolated: reported, and the other inputs go on
        logger.exception("reprocessing %s failed", job.label)
        report.error = f"{type(exc).__name__}: {exc}"
    report.time_s = time.perf_counter() - t0
    return report


def _reconstruct(
    job: Job, scan, report: Report, *, positions_from_profile: bool = False, dark=None
):
    """Pre-process ``scan`` and reconstruct it; returns the estimate and the pre-processed
    scan (whose geometry the result records)."""
    from ptystream.offline.reconstruct import preprocess_scan, reconstruct_scan

    scan, done = preprocess_scan(scan, job.profile, dark=dark)
    report.preprocess = done
    if done["rejected_saturated"]:
        report.rejected["saturated"] = done["rejected_saturated"]
    estimate = reconstruct_scan(
        scan,
        job.profile,
        epochs=job.epochs,
        positions_from_profile=positions_from_profile,
        input_warnings=tuple(done["warnings"]),
    )
    report.frames = len(scan.frames)
    report.iterations = estimate.iteration
    report.final_loss = float(estimate.last_loss)
    report.warnings = quality_metadata(estimate).get("warnings", [])
    report.thumbnail = _thumbnail(estimate)
    return estimate, scan


def _from_file(job: Job, report: Report) -> None:
    from ptystream.io.results import write_result
    from ptystream.io.scans import read_scan
    from ptystream.offline.reconstruct import geometry_for

    assert job.path is not None and job.out_dir is not None
    estimate, scan = _reconstruct(job, read_scan(job.path), report)
    out = file_result(job.out_dir, Path(job.path), job.settings_hash, job.result_format)
    partial = out.with_name(f"{out.stem}.partial{out.suffix}")  # the suffix picks the layout
    attrs = {
        "settings_hash": job.settings_hash,
        "engine": job.profile.engine.algorithm.value,
        "preprocess": json.dumps(report.preprocess),
    }
    write_result(partial, estimate, geometry_for(scan, job.profile), _provenance(job), attrs)
    partial.replace(out)  # a crash leaves no result that a rerun would skip
    report.result = str(out)


def _from_tiled(job: Job, report: Report) -> None:
    import dask

    from ptystream.store.access import connect
    from ptystream.store.runs import read_run
    from ptystream.store.versions import create_version, finish_version, write_final

    assert job.tiled_uri is not None and job.run_uid is not None
    root = connect(job.tiled_uri, job.api_key)
    t0 = time.perf_counter()
    # The tiled client reads arrays with dask's compute(); inside a task that would go to the
    # worker's own cluster client, which suspends this task and lets the worker start another
    # one meanwhile (so more runs than workers would sit in memory at once).
    with dask.config.set(scheduler="sync"):
        data = read_run(root[job.catalog][job.run_uid], job.profile)
    read_s = time.perf_counter() - t0
    report.rejected = data.rejected
    path, node = create_version(
        root,
        job.run_uid,
        job.scan_id,
        {
            "kind": "reprocess",
            "raw_uid": job.run_uid,
            "scan_id": job.scan_id,
            "settings_hash": job.settings_hash,
            "provenance": _provenance(job),
        },
    )
    report.result = path
    try:
        t1 = time.perf_counter()
        estimate, _ = _reconstruct(
            job, data.scan, report, positions_from_profile=True, dark=data.dark
        )
        t2 = time.perf_counter()
        write_final(node, estimate)
    except Exception as exc:
        finish_version(root, path, "failed", {"reason": f"{type(exc).__name__}: {exc}"})
        raise
    finish_version(
        root,
        path,
        "finished",
        {
            "frames": {
                "read": report.frames + sum(report.rejected.values()),
                "used": report.frames,
                "rejected": report.rejected,
            },
            "iterations": report.iterations,
            "final_loss": report.final_loss,
            "preprocess": report.preprocess,
            **quality_metadata(estimate),
            "timings_s": {
                "read": read_s,
                "reconstruct": t2 - t1,
                "write": time.perf_counter() - t2,
            },
        },
    )


def _provenance(job: Job) -> dict[str, Any]:
    source: dict[str, Any]
    if job.run_uid is not None:
        source = {
            "tiled": job.tiled_uri,
            "catalog": job.catalog,
            "raw_uid": job.run_uid,
            "scan_id": job.scan_id,
        }
    else:
        source = {"file": job.path}
    return {
        "software_version": __version__,
        "profile": job.profile.name,
        "settings": settings_record(job.profile, job.epochs),
        "input": source,
        "host": socket.gethostname(),
    }


def _thumbnail(estimate) -> np.ndarray:
    """The object's phase (a multislice object's: the product of its slices) over the lit
    region (illumination above 5 % of its maximum), global phase removed, NaN outside,
    downsampled to at most ``THUMBNAIL_PX``."""
    lit = estimate.illumination > 0.05 * estimate.illumination.max()
    rows, cols = np.nonzero(lit)
    crop = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    projected = estimate.projected_object
    obj = projected[crop] * np.exp(-1j * np.angle(np.sum(projected[lit])))
    phase = np.where(lit[crop], np.angle(obj), np.nan).astype(np.float32)
    step = max(1, -(-max(phase.shape) // THUMBNAIL_PX))
    return phase[::step, ::step]

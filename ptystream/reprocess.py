"""Post-scan reprocessing: finished runs (from Tiled) or scan files, one Dask task each.

The client side (:func:`plan_jobs`, :func:`run_jobs`) selects the inputs, skips those already
reprocessed with the same settings, and fans the rest out on a Dask cluster: a LocalCluster of
worker processes by default, or an existing scheduler. Each task (:func:`reprocess_one`) reads
its input on the worker, reconstructs it with :func:`ptystream.reconstruct.reconstruct_scan`,
and publishes a new version into Tiled (:mod:`ptystream.versions`) or writes an HDF5 file. A
task never raises: a failing input comes back as a report with status ``failed`` and the
reason, and the others go on. TensorFlow is imported on the workers only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from distributed import WorkerPlugin

from ptystream import __version__
from ptystream.config import Profile, describe_errors

__all__ = [
    "Job",
    "Report",
    "TensorFlowSetup",
    "file_jobs",
    "format_table",
    "looks_like_file",
    "reprocess_one",
    "run_jobs",
    "settings_hash",
    "settings_record",
    "tiled_jobs",
    "with_overrides",
    "write_outputs",
]

logger = logging.getLogger(__name__)

#: Times a task whose worker died (e.g. past its memory limit) is tried again on another
#: worker of the local cluster before it is reported failed (Dask's default is 3).
_RETRIES_AFTER_DEATH = 1

#: Longest side of the object image a report carries back for the contact sheet.
THUMBNAIL_PX = 192


def settings_record(profile: Profile, epochs: int) -> dict[str, Any]:
    """What decides a reprocessed result: the profile's name, instrument and engine settings,
    and the number of passes."""
    return {
        "profile": profile.name,
        "instrument": profile.instrument.model_dump(mode="json"),
        "engine": profile.engine.model_dump(mode="json"),
        "epochs": epochs,
    }


def settings_hash(profile: Profile, epochs: int) -> str:
    """12 hex digits identifying :func:`settings_record` (equal settings, equal hash)."""
    text = json.dumps(settings_record(profile, epochs), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Job:
    """One input to reprocess, with everything a worker needs (picklable).

    Exactly one of ``run_uid`` (a run in the catalog at ``tiled_uri``/``catalog``) and
    ``path`` (a CXI or NPZ file, written to ``out_dir``) is set.
    """

    label: str
    profile: Profile
    epochs: int
    settings_hash: str
    run_uid: str | None = None
    scan_id: int | None = None
    tiled_uri: str | None = None
    catalog: str = "raw"
    path: str | None = None
    out_dir: str | None = None
    api_key: str | None = field(default=None, repr=False)


@dataclass
class Report:
    """How one input went: one row of the summary table."""

    label: str
    status: str
    """``finished``, ``failed`` or ``skipped`` (already reprocessed with these settings)."""
    source: str
    scan_id: int | None = None
    frames: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    iterations: int = 0
    final_loss: float = float("nan")
    time_s: float = 0.0
    result: str | None = None
    """Where the result is: a node path in Tiled or an HDF5 file."""
    error: str | None = None
    thumbnail: np.ndarray | None = field(default=None, repr=False)
    """The object's phase, downsampled to at most ``THUMBNAIL_PX`` (for the contact sheet)."""


class TensorFlowSetup(WorkerPlugin):
    """Dask worker plugin: import TensorFlow with its thread pools pinned before any task.

    Without it each worker's TensorFlow would start one thread per core in every pool, and
    ``n`` workers on ``n`` cores would oversubscribe them (STACK_NOTES, Dask).
    """

    name = "ptystream-tensorflow"

    def __init__(self, threads: int = 1):
        self.threads = threads

    def setup(self, worker) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from ptystream.engine import configure_tensorflow

        configure_tensorflow(self.threads)


# -- building jobs (client side) -------------------------------------------------------------


def with_overrides(profile: Profile, assignments: list[str]) -> Profile:
    """``profile`` with ``SECTION.KEY=VALUE`` assignments applied (VALUE read as YAML), e.g.
    ``engine.probe_modes=3``; validated again, so a misspelt key or a bad value is an error
    naming it."""
    import yaml
    from pydantic import ValidationError

    data = profile.model_dump(mode="json")
    for text in assignments:
        key, sep, value = text.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2:
            raise ValueError(
                f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. engine.probe_modes=3"
            )
        node = data
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"--set {text!r}: the profile has no section {part!r}")
            node = node[part]
        node[parts[-1]] = yaml.safe_load(value)
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"--set: {describe_errors(exc)}") from exc


def tiled_jobs(
    root,
    selectors: list[str],
    profile: Profile,
    *,
    epochs: int,
    tiled_uri: str,
    api_key: str | None,
    catalog: str = "raw",
    where: list[str] | None = None,
    force: bool = False,
) -> tuple[list[Job], list[Report]]:
    """Jobs for the runs ``selectors``/``where`` pick in ``root[catalog]``
    (:func:`ptystream.runs.select_runs`), and reports for those skipped: already reprocessed
    with the same settings (unless ``force``), or not finished."""
    from ptystream.runs import select_runs
    from ptystream.versions import find_version

    digest = settings_hash(profile, epochs)
    jobs, skipped = [], []
    for ref in select_runs(root[catalog], selectors, where):
        label = f"scan {ref.scan_id}" if ref.scan_id is not None else ref.uid[:8]
        if ref.exit_status is None:
            skipped.append(Report(label, "skipped", ref.uid, ref.scan_id, error="not finished"))
            continue
        done = None if force else find_version(root, ref.uid, digest)
        if done is not None:
            path, md = done
            skipped.append(
                Report(
                    label,
                    "skipped",
                    ref.uid,
                    ref.scan_id,
                    frames=int((md.get("frames") or {}).get("used", 0)),
                    iterations=int(md.get("iterations", 0)),
                    final_loss=float(md.get("final_loss") or float("nan")),
                    result=path,
                    error="already reprocessed with these settings (--force to redo)",
                )
            )
            continue
        jobs.append(
            Job(
                label,
                profile,
                epochs,
                digest,
                run_uid=ref.uid,
                scan_id=ref.scan_id,
                tiled_uri=tiled_uri,
                catalog=catalog,
                api_key=api_key,
            )
        )
    return jobs, skipped


def file_jobs(
    paths: Iterable[str | Path],
    profile: Profile,
    *,
    epochs: int,
    out_dir: str | Path,
    force: bool = False,
) -> tuple[list[Job], list[Report]]:
    """Jobs for scan files, and reports for those whose result with the same settings is
    already in ``out_dir`` (unless ``force``)."""
    digest = settings_hash(profile, epochs)
    out_dir = Path(out_dir).resolve()  # workers may run in another directory
    jobs, skipped = [], []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"scan file {path} does not exist")
        out = _file_result(out_dir, path, digest)
        if out.is_file() and not force:
            skipped.append(
                Report(
                    path.name,
                    "skipped",
                    str(path),
                    result=str(out),
                    error="already reprocessed with these settings (--force to redo)",
                )
            )
            continue
        jobs.append(
            Job(path.name, profile, epochs, digest, path=str(path.resolve()), out_dir=str(out_dir))
        )
    return jobs, skipped


#: Suffixes of the scan files ``reprocess`` reads (:func:`ptystream.io.scans.read_scan`).
SCAN_SUFFIXES = (".cxi", ".h5", ".hdf5", ".npz")


def looks_like_file(text: str) -> bool:
    """True when ``text`` names a scan file (by its suffix) rather than a run."""
    return Path(text).suffix.lower() in SCAN_SUFFIXES


def _file_result(out_dir: str | Path, path: Path, digest: str) -> Path:
    return Path(out_dir) / f"{path.stem}-{digest}.h5"


# -- one task (worker side) ------------------------------------------------------------------


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


def _reconstruct(job: Job, scan, report: Report):
    from ptystream.reconstruct import reconstruct_scan

    estimate = reconstruct_scan(scan, job.profile, epochs=job.epochs)
    report.frames = len(scan.frames)
    report.iterations = estimate.iteration
    report.final_loss = float(estimate.last_loss)
    report.thumbnail = _thumbnail(estimate)
    return estimate


def _from_file(job: Job, report: Report) -> None:
    import h5py

    from ptystream.io.results import write_result
    from ptystream.io.scans import read_scan
    from ptystream.reconstruct import geometry_for

    assert job.path is not None and job.out_dir is not None
    scan = read_scan(job.path)
    estimate = _reconstruct(job, scan, report)
    out = _file_result(job.out_dir, Path(job.path), job.settings_hash)
    partial = out.with_suffix(".partial.h5")
    write_result(partial, estimate, geometry_for(scan, job.profile), _provenance(job))
    with h5py.File(partial, "a") as f:
        f.attrs["settings_hash"] = job.settings_hash
        f.attrs["engine"] = job.profile.engine.algorithm.value
    partial.replace(out)  # a crash leaves no result that a rerun would skip
    report.result = str(out)


def _from_tiled(job: Job, report: Report) -> None:
    import dask

    from ptystream.access import connect
    from ptystream.runs import read_run
    from ptystream.versions import create_version, finish_version, write_final

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
        estimate = _reconstruct(job, data.scan, report)
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
                "read": report.frames + sum(data.rejected.values()),
                "used": report.frames,
                "rejected": data.rejected,
            },
            "iterations": report.iterations,
            "final_loss": report.final_loss,
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
    """The object's phase over the lit region (illumination above 5 % of its maximum), global
    phase removed, NaN outside, downsampled to at most ``THUMBNAIL_PX``."""
    lit = estimate.illumination > 0.05 * estimate.illumination.max()
    rows, cols = np.nonzero(lit)
    crop = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    obj = estimate.object[crop] * np.exp(-1j * np.angle(np.sum(estimate.object[lit])))
    phase = np.where(lit[crop], np.angle(obj), np.nan).astype(np.float32)
    step = max(1, -(-max(phase.shape) // THUMBNAIL_PX))
    return phase[::step, ::step]


# -- fan-out (client side) -------------------------------------------------------------------


def run_jobs(
    jobs: list[Job],
    *,
    scheduler: str | None = None,
    workers: int = 2,
    memory_limit: str | None = None,
    tf_threads: int = 1,
    on_report: Callable[[Report], None] | None = None,
) -> list[Report]:
    """Run ``jobs`` on Dask, one task each; returns their reports in the order of ``jobs``.

    Without ``scheduler`` a LocalCluster of ``workers`` worker processes (one thread each,
    ``memory_limit`` each, default 80 % of this machine's memory shared between them) is
    started on 127.0.0.1 and closed at the end; with it, the existing cluster at that address
    is used. Either way each worker gets :class:`TensorFlowSetup`. ``on_report`` is called as
    each task finishes (for a progress bar). A worker that dies fails only its own task.
    """
    if not jobs:
        return []
    import dask
    from dask.distributed import Client, KilledWorker, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        with dask.config.set({"distributed.scheduler.allowed-failures": _RETRIES_AFTER_DEATH}):
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                # its HTTP endpoints on a free local port (the default 8787 may be taken)
                dashboard_address="127.0.0.1:0",
                memory_limit=memory_limit or _default_memory_limit(workers),
            )
    try:
        with Client(cluster or scheduler) as client:
            client.register_plugin(TensorFlowSetup(tf_threads))
            futures = {
                client.submit(reprocess_one, job, pure=False): i for i, job in enumerate(jobs)
            }
            reports: list[Report | None] = [None] * len(jobs)
            for future in as_completed(futures):
                i = futures[future]
                try:
                    report = future.result()
                except Exception as exc:  # the task never ran to its end on a worker
                    job = jobs[i]
                    why = "worker lost" if isinstance(exc, KilledWorker) else "not run by Dask"
                    report = Report(
                        job.label,
                        "failed",
                        job.run_uid or job.path or "?",
                        job.scan_id,
                        error=f"{why}: {type(exc).__name__}: {exc}",
                    )
                reports[i] = report
                if on_report is not None:
                    on_report(report)
    finally:
        if cluster is not None:
            cluster.close()
    return [r for r in reports if r is not None]


def format_table(reports: list[Report]) -> str:
    """The summary table: run, frames, iterations, final loss, time, status (and why)."""
    header = ("run", "frames", "iterations", "final loss", "time (s)", "status")
    rows = [
        (
            r.label,
            str(r.frames) + (f" (-{sum(r.rejected.values())})" if r.rejected else ""),
            str(r.iterations),
            f"{r.final_loss:.4g}" if np.isfinite(r.final_loss) else "-",
            f"{r.time_s:.1f}",
            r.status + (f": {r.error}" if r.error else ""),
        )
        for r in reports
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in (header, *rows)
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def write_outputs(out_dir: str | Path, reports: list[Report], root=None) -> Path:
    """Write ``summary.json`` (the table, with errors and result paths) and
    ``contact-sheet.png`` into ``out_dir``; returns the sheet's path. Skipped inputs whose
    result is in Tiled are drawn from it when ``root`` (a tiled client) is given."""
    from ptystream.summary import write_contact_sheet

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [
        {k: v for k, v in vars(r).items() if k != "thumbnail"}
        | {"final_loss": r.final_loss if np.isfinite(r.final_loss) else None}
        for r in reports
    ]
    (out_dir / "summary.json").write_text(json.dumps(rows, indent=1))
    tiles = []
    for r in reports:
        phase = r.thumbnail
        if phase is None and r.result and root is not None and r.status == "skipped":
            phase = _served_thumbnail(root, r.result)
        caption = f"{r.label}: {r.status}"
        if np.isfinite(r.final_loss):
            caption += f", loss {r.final_loss:.3g}"
        tiles.append((caption, phase))
    return write_contact_sheet(out_dir / "contact-sheet.png", tiles, title="ptystream reprocess")


def _served_thumbnail(root, path: str) -> np.ndarray | None:
    """The object phase of a result in Tiled, cropped to its scanned area (the windows' bounding
    box), global phase removed, downsampled to at most ``THUMBNAIL_PX``."""
    try:
        node = root
        for key in path.split("/"):
            node = node[key]
        final = node["final"]
        obj = final["object"].read()
        md = final["object"].metadata
        positions, n = final["positions_m"].read(), final["probe"].shape[-1]
        origin, dx = np.asarray(md["object_origin_m"]), md["pixel_size_m"]
    except Exception as exc:  # the sheet is a convenience: a missing tile is not an error
        logger.warning("no thumbnail for %s: %s", path, exc)
        return None
    corners = np.floor((positions - origin) / dx - n / 2 + 0.5).astype(int)
    lo, hi = np.clip(corners.min(axis=0), 0, None), corners.max(axis=0) + n
    obj = obj[lo[0] : hi[0], lo[1] : hi[1]]
    obj = obj * np.exp(-1j * np.angle(np.sum(obj)))
    step = max(1, -(-max(obj.shape) // THUMBNAIL_PX))
    return np.angle(obj[::step, ::step]).astype(np.float32)


def _default_memory_limit(workers: int) -> int:
    import psutil

    return int(0.8 * psutil.virtual_memory().total / max(workers, 1))

"""Which inputs to reprocess (client side): runs picked in Tiled or scan files, less those
already reprocessed with the same settings, each as a picklable :class:`Job`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptystream.config import Profile
from ptystream.offline.report import Report

__all__ = [
    "SCAN_SUFFIXES",
    "Job",
    "file_jobs",
    "RESULT_FORMATS",
    "file_result",
    "looks_like_file",
    "settings_hash",
    "settings_record",
    "tiled_jobs",
]


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
    result_format: str = "h5"
    api_key: str | None = field(default=None, repr=False)


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
    (:func:`ptystream.store.runs.select_runs`), and reports for those skipped: already reprocessed
    with the same settings (unless ``force``), or not finished."""
    from ptystream.store.runs import select_runs
    from ptystream.store.versions import find_version

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
    result_format: str = "h5",
) -> tuple[list[Job], list[Report]]:
    """Jobs for scan files, and reports for those whose result with the same settings is
    already in ``out_dir`` (unless ``force``); ``result_format`` ``h5`` (ptystream's layout)
    or ``cxi`` (:mod:`ptystream.io.cxi_results`)."""
    digest = settings_hash(profile, epochs)
    out_dir = Path(out_dir).resolve()  # workers may run in another directory
    jobs, skipped = [], []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"scan file {path} does not exist")
        out = file_result(out_dir, path, digest, result_format)
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
            Job(
                path.name,
                profile,
                epochs,
                digest,
                path=str(path.resolve()),
                out_dir=str(out_dir),
                result_format=result_format,
            )
        )
    return jobs, skipped


#: Suffixes of the scan files ``reprocess`` reads (:func:`ptystream.io.scans.read_scan`).
SCAN_SUFFIXES = (".cxi", ".h5", ".hdf5", ".npz")


def looks_like_file(text: str) -> bool:
    """True when ``text`` names a scan file (by its suffix) rather than a run."""
    return Path(text).suffix.lower() in SCAN_SUFFIXES


#: The file formats a scan file's result can be written in (``write_result`` by suffix).
RESULT_FORMATS = ("h5", "cxi")


def file_result(out_dir: str | Path, path: Path, digest: str, result_format: str = "h5") -> Path:
    """Where a scan file's result goes: ``<out_dir>/<stem>-<settings hash>.<h5|cxi>``."""
    if result_format not in RESULT_FORMATS:
        raise ValueError(f"result format {result_format!r}: expected one of {RESULT_FORMATS}")
    return Path(out_dir) / f"{path.stem}-{digest}.{result_format}"

"""Final results kept on local disk until Tiled takes them (numpy and the stdlib only).

A spooled result is one ``.npz`` file: every field of the :class:`~ptystream.types.Estimate`
(if the run has one) and, as JSON, the run's status, bookkeeping, the metadata its container
is created with and the path of that container once it exists. Files are written to a
temporary name, flushed to disk and renamed, so a reader never sees half of one. Readers and
writers of a spool directory take its lock (:func:`spool_lock`), so that two processes (a
``serve`` and a ``ptystream flush``) never upload the same result twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ptystream.store.layout import jsonable
from ptystream.types import Estimate

__all__ = [
    "SpoolBusy",
    "load_spooled",
    "set_node_path",
    "spool_final",
    "spool_lock",
    "spooled_files",
]

#: Suffix given to a spooled file that cannot be read, so it is reported once, then left alone.
UNREADABLE_SUFFIX = ".unreadable"


class SpoolBusy(RuntimeError):
    """Another process holds the spool directory's lock."""


@contextlib.contextmanager
def spool_lock(directory: str | Path, *, wait: bool = True) -> Iterator[None]:
    """Hold the exclusive lock of the spool ``directory`` (``.lock`` in it); without ``wait``,
    raise SpoolBusy at once if another process holds it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise SpoolBusy(f"the spool {directory} is in use by another process") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


#: Fields of an :class:`Estimate` that are not arrays: kept in the file's JSON, not as numpy
#: object arrays (which need pickle to read back).
_JSON_FIELDS = ("noise", "training", "orientation", "warnings")


def spooled_files(directory: str | Path) -> list[Path]:
    """The results kept in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.glob("*.npz"):
        with contextlib.suppress(FileNotFoundError):  # uploaded by another process meanwhile
            found.append((path.stat().st_mtime, path))
    return [path for _, path in sorted(found)]


def _write(path: Path, fields: dict[str, np.ndarray], spooled: dict[str, Any]) -> None:
    """Write ``path`` atomically and durably (temporary file, fsync, rename, fsync of the
    directory): after a crash the file is either whole or absent."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        np.savez(f, **fields, spooled_json=np.asarray(json.dumps(jsonable(spooled))))
        f.flush()
        os.fsync(f.fileno())
    partial.rename(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def spool_final(
    directory: str | Path,
    run_uid: str,
    estimate: Estimate | None,
    *,
    status: str,
    extra: dict[str, Any],
    run_metadata: dict[str, Any],
    node_path: str | None,
) -> Path:
    """Keep a run's end on disk as ``<run uid>.npz`` (``<run uid>-2.npz`` ... if taken).

    ``estimate`` is the final estimate (None if the run has none), ``status`` and ``extra``
    what the run's metadata gets at the end (frames, timings_s, reason ...), ``run_metadata``
    what its container is created with, ``node_path`` that container's path if it exists.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{run_uid}.npz"
    n = 1
    while path.exists():
        n += 1
        path = directory / f"{run_uid}-{n}.npz"
    spooled = {
        "run_uid": run_uid,
        "status": status,
        "extra": extra,
        "run_metadata": run_metadata,
        "node_path": node_path,
    }
    fields = {}
    if estimate is not None:
        fields = {
            f.name: np.asarray(getattr(estimate, f.name))
            for f in dataclasses.fields(Estimate)
            if f.name not in _JSON_FIELDS
        }
        spooled["estimate_json"] = {name: getattr(estimate, name) for name in _JSON_FIELDS}
    _write(path, fields, spooled)
    return path


def set_node_path(path: str | Path, node_path: str) -> None:
    """Record in a spooled file the container created for it, so that an upload retried after
    a failure completes that container instead of creating another."""
    path = Path(path)
    with np.load(path) as data:
        fields = {k: data[k] for k in data.files if k != "spooled_json"}
        spooled = json.loads(str(data["spooled_json"]))
    _write(path, fields, {**spooled, "node_path": node_path})


def load_spooled(path: str | Path) -> tuple[Estimate | None, dict[str, Any]]:
    """Read back what :func:`spool_final` wrote: the estimate (None if the run had none) and
    the run's ``status``, ``extra``, ``run_metadata``, ``node_path`` and ``run_uid``."""
    with np.load(path) as data:
        spooled = json.loads(str(data["spooled_json"]))
        if "object" not in data:
            return None, spooled
        values = {}
        for f in dataclasses.fields(Estimate):
            if f.name not in data:  # spooled before the field existed: its default
                continue
            value = data[f.name]
            values[f.name] = value.item() if value.ndim == 0 else value
        values["object_origin_m"] = tuple(float(v) for v in values["object_origin_m"])
        values["slice_gaps_m"] = tuple(float(v) for v in values.get("slice_gaps_m", ()))
        values |= spooled.pop("estimate_json", {})
        values["warnings"] = tuple(values.get("warnings", ()))
    return Estimate(**values), spooled

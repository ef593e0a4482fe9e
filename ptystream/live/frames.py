"""Detector frames as documents deliver them, and how the worker turns them into arrays.

A frame reaches ptystream inline (an array in an ``event``/``event_page``), as a datum id into a
file named by a ``resource`` (ophyd's NPY_SEQ, area-detector HDF5: read by the
``event_model.Filler`` handlers), or as a row of an HDF5 dataset named by a ``stream_resource``
and covered by a ``stream_datum`` (ophyd-async detectors, files still being written: SWMR).

The callback only builds the cheap references below; :class:`FrameResolver` reads them on the
worker thread. A reference whose data is not written yet raises :class:`FrameNotReady`, and the
caller retries later rather than waiting. A row the callback cannot use (no frame data, a bad
position or seq_num) travels as :class:`Unusable`, so the worker counts it with its reason.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import event_model
import h5py
import numpy as np

__all__ = [
    "DatumFrame",
    "FrameNotReady",
    "FrameResolver",
    "LiveAreaDetectorHDF5Handler",
    "RunAssets",
    "StreamFrame",
    "Unusable",
    "default_handlers",
]

logger = logging.getLogger(__name__)


class FrameNotReady(Exception):
    """The frame's file, datum or dataset row is not there yet; retry later."""


@dataclass
class RunAssets:
    """A run's resource, datum and stream-resource documents, by uid (filled on the callback's
    thread, read on the worker's: plain dict reads and writes)."""

    resources: dict[str, dict] = field(default_factory=dict)
    datums: dict[str, dict] = field(default_factory=dict)
    stream_resources: dict[str, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class DatumFrame:
    """A frame in an external file: a datum id, resolved through the run's resource."""

    datum_id: str
    assets: RunAssets


@dataclass(frozen=True)
class StreamFrame:
    """Row ``index`` of the HDF5 dataset of stream resource ``stream_resource``."""

    stream_resource: str
    index: int
    assets: RunAssets


@dataclass(frozen=True)
class Unusable:
    """A frame the callback had to refuse: ``reason`` is the bucket it is counted in
    (``frames.rejected``), ``detail`` names the document's offending value for the log."""

    reason: str
    detail: str = ""


class LiveAreaDetectorHDF5Handler:
    """``event_model.Filler`` handler for spec ``AD_HDF5`` that reads files still being written.

    Same layout and arguments as area-detector-handlers' ``AreaDetectorHDF5Handler``
    (``/entry/data/data``, ``frame_per_point``; datum ``point_number``), but that one fixes the
    dataset's length when first called and cannot open a file a writer holds open, and its SWMR
    variant fails on its second call (0.0.10). This one opens the file in SWMR read mode (plain
    read mode for a file written without SWMR) and refreshes the dataset before each read.
    """

    dataset = "/entry/data/data"

    def __init__(self, filename: str, frame_per_point: int = 1):
        self._path = Path(filename)
        self._per_point = int(frame_per_point)
        self._file: h5py.File | None = None

    def __call__(self, point_number: int) -> np.ndarray:
        if self._file is None:
            self._file = _open_hdf5(self._path)
        first = int(point_number) * self._per_point
        return _rows(self._file, self.dataset, first, first + self._per_point)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def default_handlers() -> dict[str, type]:
    """The Filler handlers built in: ophyd's NPY_SEQ and area-detector HDF5."""
    from ophyd.sim import NumpySeqHandler

    return {"NPY_SEQ": NumpySeqHandler, "AD_HDF5": LiveAreaDetectorHDF5Handler}


def _open_hdf5(path: Path) -> h5py.File:
    """Open for a SWMR read of a file another process may be writing; a file written without
    SWMR (finished, or never in SWMR mode) is opened for a plain read."""
    try:
        return h5py.File(path, "r", swmr=True, libver="latest")
    except OSError:
        return h5py.File(path, "r")


def _rows(f: h5py.File, name: str, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of dataset ``name``, refreshed first (SWMR: rows appended since
    the file was opened); FrameNotReady while the writer has not reached ``stop``."""
    data = f[name]
    data.refresh()
    if stop > data.shape[0]:
        raise FrameNotReady(f"{f.filename}:{name} has {data.shape[0]} rows so far")
    return data[start:stop]


def _import_handler(spec: str, target: str) -> type:
    module, _, name = target.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(
            f"ingest.handlers: cannot import {target!r} for spec {spec!r} ({exc})"
        ) from exc


def _local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"stream resource URI {uri!r} is not a local file")
    return Path(unquote(parsed.path))


class FrameResolver:
    """Turns inline arrays and file references into arrays (worker thread only).

    Parameters
    ----------
    handlers : extra ``SPEC: "module:Class"`` Filler handlers (the profile's
        ``ingest.handlers``); NPY_SEQ and AD_HDF5 are built in.
    root_map : ``event_model.Filler`` root map for resources written under another mount.
    """

    def __init__(
        self, handlers: dict[str, str] | None = None, root_map: dict[str, str] | None = None
    ):
        registry = default_handlers()
        registry.update({spec: _import_handler(spec, t) for spec, t in (handlers or {}).items()})
        self._root_map = dict(root_map or {})
        # no retries inside the Filler: they would sleep on the worker; the caller retries
        self._filler = event_model.Filler(
            registry, root_map=self._root_map, inplace=False, retry_intervals=[]
        )
        self._handlers: dict[str, Any] = {}
        self._files: dict[Path, h5py.File] = {}

    def resolve(self, frame: Any) -> Any:
        """The array behind ``frame`` (arrays and unknown types are returned unchanged, to be
        validated by the caller). Raises :class:`FrameNotReady` when the data is not there yet
        and other exceptions when it cannot be read."""
        if isinstance(frame, StreamFrame):
            return self._stream_frame(frame)
        if isinstance(frame, DatumFrame):
            return self._datum_frame(frame)
        return frame

    def close(self) -> None:
        """Close the HDF5 files and handlers opened so far."""
        for f in self._files.values():
            f.close()
        self._files.clear()
        for handler in self._handlers.values():
            close = getattr(handler, "close", None)
            if close is not None:
                close()
        self._handlers.clear()

    def _datum_frame(self, ref: DatumFrame) -> np.ndarray:
        datum = ref.assets.datums.get(ref.datum_id)
        if datum is None:
            raise FrameNotReady(f"datum {ref.datum_id} not received yet")
        resource = ref.assets.resources.get(datum["resource"])
        if resource is None:
            raise FrameNotReady(f"resource {datum['resource']} not received yet")
        handler = self._handlers.get(resource["uid"])
        try:
            if handler is None:
                handler = self._handlers[resource["uid"]] = self._filler.get_handler(resource)
            return np.asarray(handler(**datum["datum_kwargs"]))
        except FrameNotReady:
            raise
        except (OSError, KeyError, IndexError, ValueError, event_model.EventModelError) as exc:
            # The file may still be being written: drop the handler (it may cache a stale view).
            self._handlers.pop(resource["uid"], None)
            close = getattr(handler, "close", None) if handler is not None else None
            if close is not None:
                close()
            raise FrameNotReady(f"{resource['spec']} datum {ref.datum_id}: {exc}") from exc

    def _stream_frame(self, ref: StreamFrame) -> np.ndarray:
        sres = ref.assets.stream_resources.get(ref.stream_resource)
        if sres is None:
            raise FrameNotReady(f"stream resource {ref.stream_resource} not received yet")
        if sres.get("mimetype") != "application/x-hdf5":
            raise ValueError(f"stream resource mimetype {sres.get('mimetype')!r} is not HDF5")
        path = self._mapped(_local_path(sres["uri"]))
        dataset_name = sres["parameters"]["dataset"]
        try:
            return _rows(self._open(path), dataset_name, ref.index, ref.index + 1)[0]
        except (OSError, KeyError) as exc:
            self._forget(path)
            raise FrameNotReady(f"{path}:{dataset_name}: {exc}") from exc

    def _mapped(self, path: Path) -> Path:
        text = str(path)
        for old, new in self._root_map.items():
            if text.startswith(old.rstrip("/") + "/"):
                return Path(new) / Path(text).relative_to(old)
        return path

    def _open(self, path: Path) -> h5py.File:
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = _open_hdf5(path)
        return f

    def _forget(self, path: Path) -> None:
        f = self._files.pop(path, None)
        if f is not None:
            f.close()

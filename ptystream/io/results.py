"""Reconstruction results as HDF5 (the ``ptystream reconstruct`` output), or as CXI for other
packages (:mod:`ptystream.io.cxi_results`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ptystream.io.cxi_results import write_cxi_layout
from ptystream.types import Estimate, Geometry

__all__ = ["corner_positions_px", "illumination_of", "read_result", "write_result"]


def corner_positions_px(estimate: Estimate, frame_px: int) -> np.ndarray:
    """``(n, 2)`` row and column of each probe window's top-left corner, in object pixels."""
    origin = np.asarray(estimate.object_origin_m)
    return (estimate.positions_m - origin) / estimate.pixel_size_m - frame_px / 2


def write_result(
    path: str | Path,
    estimate: Estimate,
    geometry: Geometry,
    settings: dict[str, Any],
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Write ``object`` (complex64 ``(H, W)``, or ``(S, H, W)`` slices along the beam for a
    multislice sample, with the ``slice_gaps_m`` attribute), ``probe`` (complex64),
    ``positions_px``, ``loss`` and ``loss_iteration`` (the loss of each optimiser step, and that
    step's number: datasets, so a history of any length fits) and the geometry, ``steps`` and
    settings as attributes (SI units in the names), plus ``attrs`` (e.g. the ``engine`` that
    made it), ``noise`` (JSON: the noise model fitted and used, with any warnings),
    ``orientation`` (JSON: the check of the positions' axes, with its message and any warning),
    ``training`` (JSON, AD engine: how the refinement went: passes, an early stop, restarts after a
    divergence, the total variation's weight), ``warnings`` (JSON: what the engine detected
    that may make the result wrong, e.g. a defocus it could not check) and ``probe_defocus_m``
    (the initial probe's defocus the search chose, far field).

    The object and probe are in the units of :class:`~ptystream.types.Estimate` (the probe in
    square roots of counts, so that they predict the frames). A ``path`` ending in ``.cxi``
    is written in the CXI layout other packages read
    (:func:`~ptystream.io.cxi_results.write_cxi_layout`), with everything above but the object
    and probe (which are in the CXI places) in ``entry_1/image_1/process_1``, and the positions
    in metres (``positions_m``) there too. The file is written next to
    ``path`` and renamed onto it, so a failed write never leaves a half-written result.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        _write(partial, estimate, geometry, settings, attrs, cxi=path.suffix.lower() == ".cxi")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _write(
    path: Path,
    estimate: Estimate,
    geometry: Geometry,
    settings: dict[str, Any],
    attrs: dict[str, Any] | None,
    *,
    cxi: bool = False,
) -> None:
    with h5py.File(path, "w") as f:
        if cxi:
            group = write_cxi_layout(f, estimate, geometry)
            group["positions_m"] = estimate.positions_m.astype(np.float64)
        else:
            group = f
            f["object"] = estimate.object.astype(np.complex64)
            f["probe"] = estimate.probe.astype(np.complex64)
        group["positions_px"] = corner_positions_px(estimate, geometry.frame_px)
        group["loss"] = estimate.loss[:, 1]
        group["loss_iteration"] = estimate.loss[:, 0].astype(np.int64)
        group.attrs.update(attrs or {})
        attrs = group.attrs
        attrs["object_pixel_size_m"] = estimate.pixel_size_m
        attrs["wavelength_m"] = geometry.wavelength_m
        attrs["distance_m"] = geometry.distance_m
        attrs["propagation"] = geometry.propagation
        attrs["propagation_distance_m"] = (
            estimate.distance_m if np.isfinite(estimate.distance_m) else geometry.distance_m
        )
        attrs["object_origin_m"] = np.asarray(estimate.object_origin_m)
        attrs["steps"] = estimate.iteration
        if estimate.n_slices > 1:
            attrs["slice_gaps_m"] = np.asarray(estimate.slice_gaps_m, dtype=np.float64)
        attrs["settings"] = json.dumps(settings)
        if estimate.noise:
            attrs["noise"] = json.dumps(estimate.noise)
        if estimate.orientation:
            attrs["orientation"] = json.dumps(estimate.orientation)
        if estimate.training:
            attrs["training"] = json.dumps(estimate.training)
        if estimate.warnings:
            attrs["warnings"] = json.dumps(list(estimate.warnings))
        if np.isfinite(estimate.probe_defocus_m):
            attrs["probe_defocus_m"] = estimate.probe_defocus_m


def read_result(path: str | Path) -> Estimate:
    """A result :func:`write_result` wrote (``OUT.h5``, or a ``.cxi`` one), back as an
    :class:`~ptystream.types.Estimate`: object, probe, positions (metres, probe centres), loss
    history, the noise model, orientation check, training and warnings, steps; the
    illumination recomputed from the probe and the positions. For notebooks
    (``ptystream.read_result``) and ``ptystream show``.

    Raises FileNotFoundError for a missing file and ValueError naming the file for one that is
    not a ptystream result.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if not h5py.is_hdf5(path):
        raise ValueError(f"{path}: not an HDF5 file, so not a ptystream result")
    with h5py.File(path, "r") as f:
        if "entry_1/image_1/process_1" in f:  # the CXI layout
            group = f["entry_1/image_1/process_1"]
            obj = f["entry_1/image_1/data"][()]
            probe = f["entry_1/instrument_1/source_1/illumination"][()]
        elif "object" in f and "probe" in f:
            group, obj, probe = f, f["object"][()], f["probe"][()]
        else:
            raise ValueError(f"{path}: holds neither object/probe nor a CXI result")
        attrs = dict(group.attrs)
        corners = group["positions_px"][()]
        loss = np.column_stack([group["loss_iteration"][()], group["loss"][()]])
    dx = float(attrs["object_pixel_size_m"])
    origin = np.asarray(attrs["object_origin_m"], dtype=np.float64)
    n = probe.shape[-1]
    positions = (corners + n / 2) * dx + origin
    fitted = attrs.get("propagation") == "near_field"
    return Estimate(
        object=obj.astype(np.complex64),
        probe=probe.astype(np.complex64),
        object_origin_m=(float(origin[0]), float(origin[1])),
        pixel_size_m=dx,
        positions_m=positions,
        illumination=illumination_of(probe, corners, obj.shape[-2:]),
        iteration=int(attrs.get("steps", len(loss))),
        n_frames=len(positions),
        loss=loss.astype(np.float64).reshape(-1, 2),
        final=True,
        distance_m=float(attrs["propagation_distance_m"]) if fitted else float("nan"),
        slice_gaps_m=tuple(np.atleast_1d(attrs.get("slice_gaps_m", ())).tolist()),
        noise=json.loads(attrs["noise"]) if "noise" in attrs else None,
        probe_defocus_m=float(attrs.get("probe_defocus_m", float("nan"))),
        orientation=json.loads(attrs["orientation"]) if "orientation" in attrs else None,
        training=json.loads(attrs["training"]) if "training" in attrs else None,
        warnings=tuple(json.loads(attrs["warnings"])) if "warnings" in attrs else (),
    )


def illumination_of(
    probe: np.ndarray, corners_px: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """float32 ``shape`` sum of the probe's intensity (over modes) over the windows whose
    top-left corners are ``corners_px`` ``(n, 2)`` (rounded; windows clipped to the canvas)."""
    power = np.abs(np.asarray(probe)) ** 2
    power = power.sum(axis=0) if power.ndim == 3 else power
    n = power.shape[-1]
    out = np.zeros(tuple(shape), np.float32)
    for r, c in np.rint(corners_px).astype(int):
        r0, c0 = max(r, 0), max(c, 0)
        r1, c1 = min(r + n, out.shape[0]), min(c + n, out.shape[1])
        if r1 > r0 and c1 > c0:
            out[r0:r1, c0:c1] += power[r0 - r : r1 - r, c0 - c : c1 - c]
    return out

"""Finished scans from files: CXI (HDF5) and NPZ, as one :class:`ScanFile`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

__all__ = ["ScanFile", "read_cxi", "read_npz", "read_scan"]

_DETECTOR = "entry_1/instrument_1/detector_1"


@dataclass(frozen=True)
class ScanFile:
    """A finished scan: frames, probe positions and the geometry the file records.

    Attributes
    ----------
    frames : ``(n, N, N)`` float32 counts, as the detector recorded them.
    positions_m : ``(n, 2)`` probe positions on the sample ``(y, x)`` in metres, in the frames'
        row/column orientation.
    valid_pixels : ``(N, N)`` bool, True where a detector pixel is usable.
    wavelength_m, distance_m, detector_pixel_size_m : as recorded in the file.
    """

    frames: np.ndarray
    positions_m: np.ndarray
    valid_pixels: np.ndarray
    wavelength_m: float
    distance_m: float
    detector_pixel_size_m: float


def read_cxi(path: str | Path) -> ScanFile:
    """Read a CXI file laid out like ``shared/data/PETRAIII_P25_Near_Field_Ptycho.cxi``.

    The sample translations (lab frame, metres) are turned into probe positions on the sample
    in the frames' orientation by projecting their negative (the sample moves, the beam stays)
    on the detector's ``basis_vectors`` (rows, columns). The mask follows CXI: nonzero = bad.
    """
    path = Path(path)
    with h5py.File(path, "r") as f:
        det = f[_DETECTOR]
        frames = det["data"][()].astype(np.float32)
        if frames.ndim != 3 or frames.shape[1] != frames.shape[2]:
            raise ValueError(f"{path}: frames must be (n, N, N), got {frames.shape}")
        if "basis_vectors" not in det:
            raise ValueError(
                f"{path}: {_DETECTOR}/basis_vectors is missing, so the orientation of the "
                "translations relative to the frames is unknown"
            )
        basis = det["basis_vectors"][()].astype(float)
        if basis.shape == (2, 3):  # CXI 1.6 stores one row per detector axis
            basis = basis.T
        if basis.shape != (3, 2):
            raise ValueError(f"{path}: basis_vectors must be (3, 2) or (2, 3), got {basis.shape}")
        translation = f["entry_1/sample_1/geometry_1/translation"][()].astype(float)
        mask = det["mask"][()] if "mask" in det else np.zeros(frames.shape[1:], np.uint32)
        scan = ScanFile(
            frames=frames,
            positions_m=-translation @ (basis / np.linalg.norm(basis, axis=0)),
            valid_pixels=mask == 0,
            wavelength_m=float(f["entry_1/instrument_1/source_1/wavelength"][()]),
            distance_m=float(det["distance"][()]),
            detector_pixel_size_m=float(det["x_pixel_size"][()]),
        )
    return _checked(scan, path)


def read_npz(path: str | Path) -> ScanFile:
    """Read an NPZ with keys ``frames`` (n, N, N), ``positions_m`` (n, 2; y, x of the probe on
    the sample, metres), ``wavelength_m``, ``distance_m``, ``detector_pixel_size_m`` and,
    optionally, ``valid_pixels`` (N, N; True where usable)."""
    path = Path(path)
    with np.load(path) as data:
        missing = {
            "frames",
            "positions_m",
            "wavelength_m",
            "distance_m",
            "detector_pixel_size_m",
        } - set(data.files)
        if missing:
            raise ValueError(f"{path}: missing keys {sorted(missing)}")
        frames = data["frames"].astype(np.float32)
        valid = data["valid_pixels"] if "valid_pixels" in data.files else None
        scan = ScanFile(
            frames=frames,
            positions_m=data["positions_m"].astype(float),
            valid_pixels=(np.ones(frames.shape[1:], bool) if valid is None else valid.astype(bool)),
            wavelength_m=float(data["wavelength_m"]),
            distance_m=float(data["distance_m"]),
            detector_pixel_size_m=float(data["detector_pixel_size_m"]),
        )
    return _checked(scan, path)


def read_scan(path: str | Path) -> ScanFile:
    """:func:`read_cxi` for ``.cxi``/``.h5``/``.hdf5``, :func:`read_npz` for ``.npz``."""
    suffix = Path(path).suffix.lower()
    if suffix in (".cxi", ".h5", ".hdf5"):
        return read_cxi(path)
    if suffix == ".npz":
        return read_npz(path)
    raise ValueError(f"{path}: unknown scan format {suffix!r} (expected .cxi or .npz)")


def _checked(scan: ScanFile, path: Path) -> ScanFile:
    n = len(scan.frames)
    if scan.positions_m.shape != (n, 2):
        raise ValueError(f"{path}: {n} frames but positions of shape {scan.positions_m.shape}")
    if scan.valid_pixels.shape != scan.frames.shape[1:]:
        raise ValueError(f"{path}: mask {scan.valid_pixels.shape} vs frames {scan.frames.shape}")
    if not (np.isfinite(scan.frames).all() and np.isfinite(scan.positions_m).all()):
        raise ValueError(f"{path}: frames or positions are not finite")
    return scan

"""Finished scans from files: CXI (HDF5) and NPZ, as one :class:`ScanFile`."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

__all__ = ["ScanFile", "ScanFileError", "read_cxi", "read_npz", "read_scan"]

_DETECTOR = "entry_1/instrument_1/detector_1"
_WAVELENGTH = "entry_1/instrument_1/source_1/wavelength"
_TRANSLATION = "entry_1/sample_1/geometry_1/translation"
_LAYOUT_HINT = 'README, "Reconstructing a finished scan", lists the fields read'
_NPZ_KEYS = ("frames", "positions_m", "wavelength_m", "distance_m", "detector_pixel_size_m")


class ScanFileError(ValueError):
    """A scan file that cannot be read as a scan. The message is one line,
    ``<file>: <what is wrong> (<what to do>)``, naming a CXI field by its full HDF5 path."""


@dataclass(frozen=True)
class ScanFile:
    """A finished scan: frames, probe positions and the geometry the file records.

    Attributes
    ----------
    frames : ``(n, H, W)`` float32 counts, as the detector recorded them.
    positions_m : ``(n, 2)`` probe positions on the sample ``(y, x)`` in metres, in the frames'
        row/column orientation.
    valid_pixels : ``(H, W)`` bool, True where a detector pixel is usable.
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
    A missing file, one that is not HDF5, an absent field (named by its full HDF5 path) or
    frames that are not a stack of images raise :class:`ScanFileError` (FileNotFoundError for
    the first).
    """
    path = _existing(path)
    if not h5py.is_hdf5(path):
        raise ScanFileError(
            f"{path}: not an HDF5 file (a .cxi, .h5 or .hdf5 scan is CXI in HDF5; is it complete?)"
        )
    with h5py.File(path, "r") as f:
        data = _dataset(f, path, f"{_DETECTOR}/data")
        _check_frame_shape(path, f"{_DETECTOR}/data", data.shape)
        frames = data[()].astype(np.float32)
        if f"{_DETECTOR}/basis_vectors" not in f:
            raise ScanFileError(
                f"{path}: {_DETECTOR}/basis_vectors is missing, so the orientation of the "
                f"translations relative to the frames is unknown ({_LAYOUT_HINT})"
            )
        basis = _dataset(f, path, f"{_DETECTOR}/basis_vectors")[()].astype(float)
        if basis.shape == (2, 3):  # CXI 1.6 stores one row per detector axis
            basis = basis.T
        if basis.shape != (3, 2):
            raise ScanFileError(
                f"{path}: {_DETECTOR}/basis_vectors is {basis.shape}, not (3, 2) or (2, 3)"
            )
        translation = _dataset(f, path, _TRANSLATION)[()].astype(float)
        mask_path = f"{_DETECTOR}/mask"
        mask = (
            _dataset(f, path, mask_path)[()]
            if mask_path in f
            else np.zeros(frames.shape[1:], np.uint32)
        )
        scan = ScanFile(
            frames=frames,
            positions_m=-translation @ (basis / np.linalg.norm(basis, axis=0)),
            valid_pixels=mask == 0,
            wavelength_m=_cxi_scalar(f, path, _WAVELENGTH),
            distance_m=_cxi_scalar(f, path, f"{_DETECTOR}/distance"),
            detector_pixel_size_m=_cxi_scalar(f, path, f"{_DETECTOR}/x_pixel_size"),
        )
    return _checked(scan, path)


def read_npz(path: str | Path) -> ScanFile:
    """Read an NPZ with keys ``frames`` (n, N, N), ``positions_m`` (n, 2; y, x of the probe on
    the sample, metres), ``wavelength_m``, ``distance_m``, ``detector_pixel_size_m`` and,
    optionally, ``valid_pixels`` (N, N; True where usable). Errors as :func:`read_cxi`'s."""
    path = _existing(path)
    if not zipfile.is_zipfile(path):
        raise ScanFileError(f"{path}: not an NPZ file (write it with numpy.savez)")
    with np.load(path, allow_pickle=False) as data:
        missing = [key for key in _NPZ_KEYS if key not in data.files]
        if missing:
            raise ScanFileError(
                f"{path}: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing "
                f"(an NPZ scan holds {', '.join(_NPZ_KEYS)} and optionally valid_pixels)"
            )
        _check_frame_shape(path, "frames", data["frames"].shape)
        frames = data["frames"].astype(np.float32)
        valid = data["valid_pixels"] if "valid_pixels" in data.files else None
        scan = ScanFile(
            frames=frames,
            positions_m=data["positions_m"].astype(float),
            valid_pixels=(np.ones(frames.shape[1:], bool) if valid is None else valid.astype(bool)),
            wavelength_m=_scalar(path, "wavelength_m", data["wavelength_m"]),
            distance_m=_scalar(path, "distance_m", data["distance_m"]),
            detector_pixel_size_m=_scalar(
                path, "detector_pixel_size_m", data["detector_pixel_size_m"]
            ),
        )
    return _checked(scan, path)


def read_scan(path: str | Path) -> ScanFile:
    """:func:`read_cxi` for ``.cxi``/``.h5``/``.hdf5``, :func:`read_npz` for ``.npz``."""
    suffix = Path(path).suffix.lower()
    if suffix in (".cxi", ".h5", ".hdf5"):
        return read_cxi(path)
    if suffix == ".npz":
        return read_npz(path)
    raise ScanFileError(
        f"{path}: unknown scan format {suffix!r} (expected .cxi, .h5, .hdf5 or .npz)"
    )


def _existing(path: str | Path) -> Path:
    """``path`` as a Path; FileNotFoundError ``<path>: no such file`` when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {'a directory' if path.is_dir() else 'no such file'}")
    return path


def _dataset(f: h5py.File, path: Path, name: str) -> h5py.Dataset:
    """The dataset at ``name``; ScanFileError naming its full path when absent."""
    node = f.get(name)
    if not isinstance(node, h5py.Dataset):
        what = "is missing" if node is None else "is a group, not a dataset"
        raise ScanFileError(f"{path}: {name} {what} ({_LAYOUT_HINT})")
    return node


def _cxi_scalar(f: h5py.File, path: Path, name: str) -> float:
    return _scalar(path, name, _dataset(f, path, name)[()])


def _scalar(path: Path, name: str, value: object) -> float:
    """``value`` as a float; ScanFileError naming ``name`` unless it is one number."""
    value = np.asarray(value)
    if value.size != 1 or not np.issubdtype(value.dtype, np.number):
        raise ScanFileError(f"{path}: {name} is {value.dtype} {value.shape}, not one number")
    return float(value.reshape(()))


def _check_frame_shape(path: Path, name: str, shape: tuple[int, ...]) -> None:
    """Frames must be a stack of images ``(n, H, W)``, none of them empty (a window is cut
    from them by the profile's ``preprocess``, which also refuses non-square frames without
    one)."""
    if len(shape) != 3:
        raise ScanFileError(f"{path}: {name} has shape {shape}, not (n, H, W): a stack of frames")
    if 0 in shape:
        raise ScanFileError(f"{path}: {name} is empty (shape {shape})")


def _checked(scan: ScanFile, path: Path) -> ScanFile:
    n = len(scan.frames)
    if scan.positions_m.shape != (n, 2):
        raise ScanFileError(
            f"{path}: {n} frames but positions of shape {scan.positions_m.shape}, not ({n}, 2)"
        )
    if scan.valid_pixels.shape != scan.frames.shape[1:]:
        raise ScanFileError(
            f"{path}: mask {scan.valid_pixels.shape} vs frames {scan.frames.shape[1:]}"
        )
    if not (np.isfinite(scan.frames).all() and np.isfinite(scan.positions_m).all()):
        raise ScanFileError(f"{path}: frames or positions are not finite")
    return scan

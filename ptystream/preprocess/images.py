"""Calibration images a profile names (dark, flat, bad-pixel mask): HDF5, NPY/NPZ or TIFF."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

__all__ = ["ImageFileError", "read_image"]

_TIFF = (".tif", ".tiff")
_HDF5 = (".h5", ".hdf5", ".hdf", ".nxs", ".cxi")


class ImageFileError(ValueError):
    """A calibration image that cannot be read; the message is one line,
    ``<file>: <what is wrong> (<what to do>)``."""


def read_image(spec: str | Path, what: str) -> np.ndarray:
    """The 2-D image in the file ``spec`` names, as float64; a stack ``(n, H, W)`` is averaged
    over its first axis (dark frames are usually taken as a series).

    ``spec`` is a path, or for HDF5 ``path:/group/dataset`` (needed when the file holds more
    than one 2-D or 3-D dataset). ``what`` names the image in errors (``preprocess.dark_file``).
    """
    text = str(spec)
    path, _, inner = text.partition(":/")
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(f"{what}: {path}: no such file (check the path in the profile)")
    suffix = path.suffix.lower()
    try:
        if suffix in _HDF5 or h5py.is_hdf5(path):
            image = _from_hdf5(path, "/" + inner if inner else None, what)
        elif suffix in _TIFF:
            import tifffile

            image = tifffile.imread(path)
        elif suffix == ".npz":
            with np.load(path) as archive:
                if len(archive.files) != 1:
                    raise ImageFileError(
                        f"{what}: {path}: holds {', '.join(archive.files)} (save one array)"
                    )
                image = archive[archive.files[0]]
        else:
            image = np.load(path, allow_pickle=False)
    except ImageFileError:
        raise
    except Exception as exc:  # each reader has its own errors for a corrupt file
        raise ImageFileError(
            f"{what}: {path}: not a readable HDF5, NPY or TIFF image ({type(exc).__name__}: {exc})"
        ) from None
    image = np.asarray(image)
    if image.dtype.kind not in "biuf" or image.ndim not in (2, 3) or 0 in image.shape:
        raise ImageFileError(
            f"{what}: {path}: a {image.dtype} array of shape {image.shape}, not an image "
            "(H, W) or a stack (n, H, W)"
        )
    image = image.astype(np.float64)
    return image.mean(axis=0) if image.ndim == 3 else image


def _from_hdf5(path: Path, inner: str | None, what: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        if inner is not None:
            node = f.get(inner)
            if not isinstance(node, h5py.Dataset):
                raise ImageFileError(f"{what}: {path}: no dataset {inner} in the file")
            return node[()]
        found: list[str] = []
        f.visititems(
            lambda name, node: (
                found.append(name)
                if isinstance(node, h5py.Dataset) and node.ndim in (2, 3)
                else None
            )
        )
        if len(found) != 1:
            listed = ", ".join("/" + n for n in found) or "none"
            raise ImageFileError(
                f"{what}: {path}: {len(found)} image datasets ({listed}); name one as "
                f"{path}:/path/to/dataset"
            )
        return f[found[0]][()]

"""A result in the CXI layout (Coherent X-ray Imaging, version 1.6), which ptychodus and other
packages read: what ``ptystream reconstruct --out RESULT.cxi`` writes.

- ``cxi_version``: 160;
- ``entry_1/image_1/data``: the object, complex64 ``(H, W)`` (``(S, H, W)`` slices of a
  multislice sample), dimensionless; ``data_type`` ``"object"``; ``x_pixel_size`` and
  ``y_pixel_size``: the object pixel, m;
- ``entry_1/instrument_1/source_1/illumination``: the probe, complex64 ``(N, N)`` or
  ``(M, N, N)`` modes, in square roots of counts; ``wavelength`` (m) and ``energy`` (J);
- ``entry_1/instrument_1/detector_1/``: ``distance`` (sample to detector, m),
  ``x_pixel_size`` and ``y_pixel_size`` (m), ``basis_vectors`` ``(2, 3)`` (the lab vectors, m,
  of a step along a detector row and along a column);
- ``entry_1/sample_1/geometry_1/translation``: ``(n, 3)`` sample translations, m.

Positions follow the convention ptystream reads CXI files with (README, "Reconstructing a
finished scan"): the probe position ``(y, x)`` on the sample is the negative translation
projected on the unit basis vectors, so a result's translations are ``-(y e_row + x e_col)``
with ``e_row`` the lab y axis and ``e_col`` the lab x axis.
"""

from __future__ import annotations

import h5py
import numpy as np

from ptystream.types import Estimate, Geometry

__all__ = ["CXI_VERSION", "write_cxi_layout"]

CXI_VERSION = 160
#: Planck's constant times the speed of light, J m (the source's energy from its wavelength).
_HC_J_M = 1.98644586e-25
#: Lab directions of a detector row step and column step.
_ROW, _COLUMN = np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0])


def write_cxi_layout(f: h5py.File, estimate: Estimate, geometry: Geometry) -> h5py.Group:
    """Write ``estimate`` into the open file ``f`` in the CXI layout above; return the group
    ``entry_1/image_1/process_1`` for what the layout has no place for."""
    f["cxi_version"] = CXI_VERSION
    entry = f.create_group("entry_1")
    image = entry.create_group("image_1")
    image["data"] = estimate.object.astype(np.complex64)
    image["data_type"] = "object"
    image["x_pixel_size"] = image["y_pixel_size"] = estimate.pixel_size_m
    source = entry.create_group("instrument_1/source_1")
    source["illumination"] = estimate.probe.astype(np.complex64)
    source["wavelength"] = geometry.wavelength_m
    source["energy"] = _HC_J_M / geometry.wavelength_m
    detector = entry.create_group("instrument_1/detector_1")
    detector["distance"] = geometry.distance_m
    detector["x_pixel_size"] = detector["y_pixel_size"] = geometry.detector_pixel_size_m
    detector["basis_vectors"] = geometry.detector_pixel_size_m * np.stack([_ROW, _COLUMN])
    y, x = estimate.positions_m[:, :1], estimate.positions_m[:, 1:]
    entry["sample_1/geometry_1/translation"] = -(y * _ROW + x * _COLUMN)
    return image.create_group("process_1")

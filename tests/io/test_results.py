"""The HDF5 result of ``ptystream reconstruct``: every array and attribute as written, read back
with h5py (estimates made by hand, so every value is known)."""

import dataclasses
import json

import h5py
import numpy as np

from ptystream.io.results import corner_positions_px, write_result
from ptystream.types import Geometry


def test_a_far_field_result_round_trips(tmp_path, estimate):
    est = estimate(7, n_frames=5)
    geometry = Geometry(1e-10, 2.0, 75e-6, 16)
    settings = {"algorithm": "ad", "batch_size": 16, "learning_rate": 0.1}
    out = write_result(tmp_path / "nested" / "out.h5", est, geometry, settings)
    assert out == tmp_path / "nested" / "out.h5"  # the directory is made
    with h5py.File(out) as f:
        arrays = {key: f[key][()] for key in ("object", "probe", "positions_px", "loss")}
        iterations = f["loss"].attrs["iteration"]
        attrs = dict(f.attrs)
    assert arrays["object"].dtype == np.complex64 and arrays["probe"].dtype == np.complex64
    np.testing.assert_array_equal(arrays["object"], est.object)
    np.testing.assert_array_equal(arrays["probe"], est.probe)
    # the window's top-left corner in object pixels: (position - origin) / dx - N / 2
    corners = (est.positions_m - np.array([-1e-6, -2e-6])) / 5e-8 - 8
    np.testing.assert_allclose(arrays["positions_px"], corners, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(arrays["loss"], [1 / (i + 1) for i in range(1, 8)])
    np.testing.assert_array_equal(iterations, np.arange(1, 8))
    assert attrs["object_pixel_size_m"] == 5e-8 and attrs["wavelength_m"] == 1e-10
    assert attrs["distance_m"] == 2.0 and attrs["propagation"] == "far_field"
    assert attrs["propagation_distance_m"] == 2.0  # no fitted distance: the geometry's
    np.testing.assert_array_equal(attrs["object_origin_m"], [-1e-6, -2e-6])
    assert attrs["steps"] == 7 and json.loads(attrs["settings"]) == settings


def test_a_fitted_distance_and_probe_modes_are_kept(tmp_path, estimate):
    est = estimate(3)
    modes = np.stack([est.probe, 0.5j * est.probe])
    est = dataclasses.replace(est, probe=modes, distance_m=1.9e-3)
    geometry = Geometry(561e-9, 2e-3, 6.45e-6, 16, propagation="near_field")
    out = write_result(tmp_path / "out.h5", est, geometry, {})
    with h5py.File(out) as f:
        assert f["probe"].shape == (2, 16, 16)
        np.testing.assert_array_equal(f["probe"][()], modes)
        assert f.attrs["propagation"] == "near_field"
        assert f.attrs["propagation_distance_m"] == 1.9e-3 and f.attrs["distance_m"] == 2e-3


def test_corner_positions_undo_the_placement(estimate):
    """A window whose top-left corner is at pixel (r, c) has its probe centred at
    origin + (r + N / 2, c + N / 2) * dx."""
    est = estimate(1, n_frames=3)
    corners = np.array([[0.0, 0.0], [3.0, 10.0], [12.25, 7.5]])
    positions = np.array(est.object_origin_m) + (corners + 32) * est.pixel_size_m
    placed = dataclasses.replace(est, positions_m=positions)
    np.testing.assert_allclose(corner_positions_px(placed, 64), corners, rtol=0, atol=1e-9)

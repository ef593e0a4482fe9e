"""The HDF5 result of ``ptystream reconstruct``: every array and attribute as written, read back
with h5py (estimates made by hand, so every value is known)."""

import dataclasses
import json

import h5py
import numpy as np
import pytest

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
        iterations = f["loss_iteration"][()]
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


def test_a_long_loss_history_is_written(tmp_path, estimate):
    """mPIE records one loss per position: 16 passes of a 516-frame scan pass 8191 entries, the
    most an HDF5 attribute (64 KiB) holds; the history is a dataset, so any length fits."""
    est = estimate(3)
    steps = np.arange(1, 200_001, dtype=np.float64)
    est = dataclasses.replace(est, loss=np.column_stack([steps, 1 / steps]), iteration=200_000)
    out = write_result(tmp_path / "out.h5", est, Geometry(1e-10, 2.0, 75e-6, 16), {})
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["loss_iteration"][()], steps.astype(np.int64))
        np.testing.assert_array_equal(f["loss"][()], 1 / steps)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]  # no partial file left


def test_a_failed_write_leaves_no_file(tmp_path, estimate):
    """A result that cannot be written (here a settings value JSON cannot encode) raises, and
    leaves neither a half-written file nor its partial copy behind."""
    est = estimate(3)
    with pytest.raises(TypeError):
        write_result(tmp_path / "out.h5", est, Geometry(1e-10, 2.0, 75e-6, 16), {"x": object()})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".h5", ".cxi"])
def test_a_written_result_reads_back(tmp_path, estimate, suffix):
    """``read_result`` (the notebook API, and ``ptystream show``) gives back what was written,
    the illumination recomputed from the probe over the windows."""
    from ptystream.io.results import read_result

    est = dataclasses.replace(
        estimate(7, n_frames=5),
        noise={
            "loss": "amplitude",
            "read_noise_counts": 9.5,
            "read_noise_source": "estimated",
            "warnings": [],
        },
        orientation={"verdict": "confirmed", "message": "axes confirmed", "warnings": []},
        training={"passes": 12, "restarts": 1, "tv_weight": 2.5e-4},
        warnings=("the probe defocus search could not choose",),
        probe_defocus_m=1.5e-3,
    )
    geometry = Geometry(1e-10, 2.0, 75e-6, 16)
    back = read_result(write_result(tmp_path / f"out{suffix}", est, geometry, {}))
    np.testing.assert_array_equal(back.object, est.object)
    np.testing.assert_array_equal(back.probe, est.probe)
    np.testing.assert_allclose(back.positions_m, est.positions_m, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(back.loss, est.loss)
    assert back.object_origin_m == est.object_origin_m and back.pixel_size_m == 5e-8
    assert back.iteration == 7 and back.n_frames == 5 and back.final
    assert back.noise == est.noise and back.orientation == est.orientation
    assert back.training == est.training and back.warnings == est.warnings
    # ``ptystream show`` prints these notes from the file
    assert back.notes() == [
        "noise: amplitude loss, read noise 9.5 counts (estimated)",
        "initial probe: defocus 1.5 mm",
        "total variation weight 0.00025",
        "axes confirmed",
        "warning: the probe defocus search could not choose",
    ]
    assert back.probe_defocus_m == 1.5e-3
    corners = np.rint(corner_positions_px(est, 16)).astype(int)
    assert back.illumination.shape == est.object.shape and back.illumination.max() > 0
    assert back.illumination.sum() == pytest.approx(
        sum(
            (np.abs(est.probe[max(0, -r) : max(0, 48 - r), max(0, -c) : max(0, 48 - c)]) ** 2).sum()
            for r, c in corners
        ),
        rel=1e-5,
    )


def test_what_is_not_a_result_is_named(tmp_path):
    from ptystream.io.results import read_result

    (tmp_path / "text.h5").write_text("no")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(FileNotFoundError, match="missing.h5 does not exist"):
        read_result(tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="text.h5: not an HDF5 file"):
        read_result(tmp_path / "text.h5")
    with pytest.raises(ValueError, match="other.h5: holds neither object/probe nor a CXI"):
        read_result(tmp_path / "other.h5")

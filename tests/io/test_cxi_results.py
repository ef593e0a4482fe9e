"""A result written as CXI (``--out RESULT.cxi``): the CXI places hold object, probe, geometry and
translations, read back with h5py, and the translations give back the positions by the
convention ptystream reads CXI scans with; the rest is in entry_1/image_1/process_1."""

import json

import h5py
import numpy as np

from ptystream.io.results import corner_positions_px, write_result
from ptystream.types import Geometry


def test_a_result_in_the_cxi_layout(tmp_path, estimate):
    est = estimate(7, n_frames=5)
    geometry = Geometry(1e-10, 2.0, 75e-6, 16)
    settings = {"algorithm": "ad", "batch_size": 16}
    out = write_result(tmp_path / "out.cxi", est, geometry, settings, {"engine": "ad"})
    with h5py.File(out) as f:
        assert f["cxi_version"][()] == 160
        image = f["entry_1/image_1"]
        np.testing.assert_array_equal(image["data"][()], est.object)
        assert image["data"].dtype == np.complex64 and image["data_type"][()] == b"object"
        assert image["x_pixel_size"][()] == image["y_pixel_size"][()] == est.pixel_size_m
        source = f["entry_1/instrument_1/source_1"]
        np.testing.assert_array_equal(source["illumination"][()], est.probe)
        assert source["wavelength"][()] == 1e-10
        assert np.isclose(source["energy"][()] / 1.602176634e-19, 12398.4, rtol=1e-5)  # eV
        detector = f["entry_1/instrument_1/detector_1"]
        assert detector["distance"][()] == 2.0 and detector["x_pixel_size"][()] == 75e-6
        basis = detector["basis_vectors"][()]
        translation = f["entry_1/sample_1/geometry_1/translation"][()]
        process = f["entry_1/image_1/process_1"]
        positions_m, positions_px = process["positions_m"][()], process["positions_px"][()]
        assert json.loads(process.attrs["settings"]) == settings
        assert process.attrs["engine"] == "ad" and process.attrs["steps"] == 7
        np.testing.assert_array_equal(process["loss_iteration"][()], np.arange(1, 8))
    # ptystream's CXI reading: the negative translation on the unit basis vectors (rows, cols)
    unit = basis.T / np.linalg.norm(basis.T, axis=0)
    np.testing.assert_allclose(-translation @ unit, est.positions_m, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(positions_m, est.positions_m)
    np.testing.assert_allclose(positions_px, corner_positions_px(est, 16))

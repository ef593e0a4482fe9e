import re

import h5py
import numpy as np
import pytest

from ptystream.io.scans import ScanFileError, read_cxi, read_npz, read_scan


def test_read_the_p25_scan(p25):
    scan = read_cxi(p25)
    assert scan.frames.shape == (200, 100, 100) and scan.frames.dtype == np.float32
    assert scan.valid_pixels.sum() == 9995  # 5 pixels flagged in the CXI mask
    assert scan.wavelength_m == pytest.approx(9.795e-11, rel=1e-3)
    assert scan.distance_m == pytest.approx(1.12, rel=1e-6)  # float32 in the file
    assert scan.detector_pixel_size_m == pytest.approx(55e-6, rel=1e-6)
    with h5py.File(p25) as f:
        translation = f["entry_1/sample_1/geometry_1/translation"][()]
    # rows run along -y and columns along -x of the lab, and the sample moves, not the beam:
    # the probe sits at (+t_y, +t_x) in frame orientation (the convention the data also pick:
    # its loss after 40 passes is half that of every other sign and axis choice)
    np.testing.assert_allclose(scan.positions_m, translation[:, [1, 0]], rtol=1e-6)


def small_cxi(path, with_basis=True, frames=(3, 8, 8)):
    with h5py.File(path, "w") as f:
        det = f.create_group("entry_1/instrument_1/detector_1")
        det["data"] = np.ones(frames, np.int32)
        det["distance"] = 1.0
        det["x_pixel_size"] = 1e-5
        if with_basis:
            det["basis_vectors"] = np.array([[0, 1e-5], [1e-5, 0], [0, 0]])  # rows +y, cols +x
        f["entry_1/instrument_1/source_1/wavelength"] = 1e-10
        f["entry_1/sample_1/geometry_1/translation"] = np.array(
            [[1e-6, 2e-6, 0], [3e-6, 4e-6, 0], [5e-6, 6e-6, 0]]
        )
    return path


def test_cxi_projection_follows_the_basis_vectors(tmp_path):
    scan = read_scan(small_cxi(tmp_path / "s.cxi"))
    np.testing.assert_allclose(
        scan.positions_m, -np.array([[2e-6, 1e-6], [4e-6, 3e-6], [6e-6, 5e-6]])
    )
    assert scan.valid_pixels.all()  # no mask: every pixel valid


def test_cxi_without_basis_vectors_is_refused(tmp_path):
    with pytest.raises(ValueError, match="basis_vectors is missing"):
        read_cxi(small_cxi(tmp_path / "s.cxi", with_basis=False))


def test_npz_round_trip_and_errors(tmp_path):
    frames = np.random.default_rng(0).uniform(size=(4, 8, 8))
    valid = np.ones((8, 8), bool)
    valid[0, 0] = False
    path = tmp_path / "s.npz"
    np.savez(
        path,
        frames=frames,
        positions_m=np.zeros((4, 2)),
        wavelength_m=1e-10,
        distance_m=2.0,
        detector_pixel_size_m=7.5e-5,
        valid_pixels=valid,
    )
    scan = read_npz(path)
    np.testing.assert_allclose(scan.frames, frames.astype(np.float32))
    assert not scan.valid_pixels[0, 0] and scan.valid_pixels.sum() == 63
    np.savez(
        tmp_path / "bad.npz",
        frames=frames,
        positions_m=np.zeros((3, 2)),
        wavelength_m=1,
        distance_m=1,
        detector_pixel_size_m=1,
    )
    with pytest.raises(ValueError, match=r"4 frames but positions of shape \(3, 2\)"):
        read_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "short.npz", frames=frames)
    with pytest.raises(
        ScanFileError, match="positions_m, wavelength_m, distance_m, detector_pixel_size_m are "
    ):
        read_npz(tmp_path / "short.npz")
    with pytest.raises(ScanFileError, match=r"scan.tiff: unknown scan format '\.tiff' \("):
        read_scan(tmp_path / "scan.tiff")


def test_file_errors_name_the_file_and_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.cxi: no such file$"):
        read_scan(tmp_path / "absent.cxi")
    (tmp_path / "text.cxi").write_text("not HDF5")
    with pytest.raises(ScanFileError, match=r"text.cxi: not an HDF5 file \("):
        read_scan(tmp_path / "text.cxi")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ScanFileError, match=r"text.npz: not an NPZ file \("):
        read_scan(tmp_path / "text.npz")
    # a detector wider than high is read as it is: preprocess.size_px cuts the window
    assert read_scan(small_cxi(tmp_path / "wide.cxi", frames=(3, 8, 9))).frames.shape == (3, 8, 9)
    np.savez(
        tmp_path / "flat.npz",
        frames=np.ones((8, 8)),
        positions_m=np.zeros((8, 2)),
        wavelength_m=1,
        distance_m=1,
        detector_pixel_size_m=1,
    )
    with pytest.raises(ScanFileError, match=r"frames has shape \(8, 8\), not \(n, H, W\)"):
        read_scan(tmp_path / "flat.npz")


@pytest.mark.parametrize(
    "field",
    [
        "entry_1/instrument_1/detector_1/data",
        "entry_1/instrument_1/detector_1/distance",
        "entry_1/instrument_1/detector_1/x_pixel_size",
        "entry_1/instrument_1/source_1/wavelength",
        "entry_1/sample_1/geometry_1/translation",
    ],
)
def test_an_absent_cxi_field_is_named_by_its_full_path(tmp_path, field):
    path = small_cxi(tmp_path / "s.cxi")
    with h5py.File(path, "a") as f:
        del f[field]
    with pytest.raises(ScanFileError, match=f"^{re.escape(str(path))}: {field} is missing \\("):
        read_cxi(path)


def test_a_cxi_scalar_must_be_one_number(tmp_path):
    path = small_cxi(tmp_path / "s.cxi")
    with h5py.File(path, "a") as f:
        del f["entry_1/instrument_1/detector_1/distance"]
        f["entry_1/instrument_1/detector_1/distance"] = [1.0, 2.0]
    with pytest.raises(ScanFileError, match="distance is float64 \\(2,\\), not one number"):
        read_cxi(path)

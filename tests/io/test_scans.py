import h5py
import numpy as np
import pytest

from ptystream.io.scans import read_cxi, read_npz, read_scan


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


def small_cxi(path, with_basis=True):
    with h5py.File(path, "w") as f:
        det = f.create_group("entry_1/instrument_1/detector_1")
        det["data"] = np.ones((3, 8, 8), np.int32)
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
    with pytest.raises(ValueError, match="missing keys"):
        read_npz(tmp_path / "short.npz")
    with pytest.raises(ValueError, match="unknown scan format"):
        read_scan(tmp_path / "scan.tiff")

"""What a user already has goes in: a probe from a file (NPZ, a previous result as HDF5 or CXI,
a CXI file's illumination) through the profile's ``engine.initial_probe_file``, for every path
that builds an engine from a profile; and far-field frames stored with zero frequency at the
corner, said rather than reconstructed silently."""

import h5py
import numpy as np
import pytest

from ptystream.config import Algorithm, load_profile, with_overrides
from ptystream.engine import EngineSetup, make_engine
from ptystream.engine.initial import read_probe_file
from ptystream.offline.reconstruct import reconstruct_file
from ptystream.sim.problems import far_field_problem


@pytest.fixture(scope="module")
def probe():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(2, 16, 16)) + 1j * rng.normal(size=(2, 16, 16))).astype(np.complex64)


def test_every_kind_of_probe_file_is_read(tmp_path, probe):
    np.savez(tmp_path / "p.npz", probe=probe)
    with h5py.File(tmp_path / "result.h5", "w") as f:
        f["probe"] = probe[0]
    with h5py.File(tmp_path / "scan.cxi", "w") as f:
        f["entry_1/instrument_1/source_1/illumination"] = probe
    np.testing.assert_array_equal(read_probe_file(tmp_path / "p.npz", 16), probe)
    np.testing.assert_array_equal(read_probe_file(tmp_path / "result.h5", 16), probe[0])
    np.testing.assert_array_equal(read_probe_file(tmp_path / "scan.cxi", 16), probe)


def test_a_bad_probe_file_is_named(tmp_path, probe):
    np.savez(tmp_path / "other.npz", object=probe)
    (tmp_path / "text.h5").write_text("not hdf5")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["object"] = probe
    with pytest.raises(FileNotFoundError, match="missing.npz does not exist"):
        read_probe_file(tmp_path / "missing.npz", 16)
    with pytest.raises(ValueError, match="no 'probe' array \\(keys: object\\)"):
        read_probe_file(tmp_path / "other.npz", 16)
    with pytest.raises(ValueError, match="text.h5: not an NPZ or HDF5 file"):
        read_probe_file(tmp_path / "text.h5", 16)
    with pytest.raises(ValueError, match="empty.h5: holds none of probe"):
        read_probe_file(tmp_path / "empty.h5", 16)
    np.savez(tmp_path / "p.npz", probe=probe)
    with pytest.raises(ValueError, match="the probe is \\(2, 16, 16\\), the frames are 64 x 64"):
        read_probe_file(tmp_path / "p.npz", 64)


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    problem = far_field_problem(128, 80, seed=1, peak_counts=1e4, read_noise_counts=2)
    path = tmp_path_factory.mktemp("scan") / "scan.npz"
    g = problem.geometry
    np.savez(
        path,
        frames=problem.frames,
        positions_m=problem.positions_m,
        wavelength_m=g.wavelength_m,
        distance_m=g.distance_m,
        detector_pixel_size_m=g.detector_pixel_size_m,
    )
    return path, problem


def test_reconstruct_starts_from_a_previous_results_probe(tmp_path, scan):
    """The probe of a previous result, named in the profile, is the one an engine built from
    that profile starts from (scaled to the frames' power), and ``reconstruct`` records the
    file in the result's settings."""
    import json

    from ptystream.io.scans import read_scan
    from ptystream.offline.reconstruct import geometry_for

    path, problem = scan
    profile = with_overrides(load_profile("hard-xray-farfield"), ["engine.algorithm=mpie"])
    reconstruct_file(path, profile, tmp_path / "first.h5", epochs=5)
    again = with_overrides(profile, [f"engine.initial_probe_file={tmp_path / 'first.h5'}"])
    with h5py.File(tmp_path / "first.h5") as f:
        first = f["probe"][()]
    data = read_scan(path)
    engine = make_engine(EngineSetup.from_profile(again, geometry=geometry_for(data, again)))
    engine.add_frames(data.frames, data.positions_m)
    start = engine.estimate().probe
    ratio = np.vdot(first, start) / np.vdot(first, first)
    np.testing.assert_allclose(start, ratio * first, rtol=0, atol=1e-5 * np.abs(start).max())
    assert np.isnan(engine.probe_defocus_m)  # a given probe: no defocus search
    reconstruct_file(path, again, tmp_path / "warm.h5", epochs=1)
    with h5py.File(tmp_path / "warm.h5") as f:
        settings = json.loads(f.attrs["settings"])
    assert settings["initial_probe_file"] == str(tmp_path / "first.h5")


def test_frames_with_zero_frequency_at_the_corner_are_said(scan):
    _, problem = scan
    settings = load_profile("hard-xray-farfield").engine
    setup = EngineSetup(problem.geometry, settings.model_copy(update={"algorithm": Algorithm.MPIE}))
    warned = make_engine(setup)
    warned.add_frames(np.fft.ifftshift(problem.frames, axes=(-2, -1)), problem.positions_m)
    (warning,) = [w for w in warned.estimate().warnings if "zero frequency" in w]
    assert "np.fft.fftshift" in warning
    right = make_engine(setup)
    right.add_frames(problem.frames, problem.positions_m)
    assert not any("zero frequency" in w for w in right.estimate().warnings)

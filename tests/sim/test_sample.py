import numpy as np
import pytest

from ptystream import optics
from ptystream.config import ProbeKind, load_profile
from ptystream.sim.detector import DetectorModel, diffraction_pattern, exit_wave
from ptystream.sim.sample import make_ground_truth, make_object


@pytest.fixture(scope="module")
def profile():
    return load_profile("demo")


@pytest.fixture(scope="module")
def truth(profile):
    return make_ground_truth(profile.sim, profile.instrument.geometry())


def test_object_ranges_come_from_the_settings():
    obj = make_object(96, (0.3, 1.0), (-1.2, 1.2))
    assert obj.dtype == np.complex64
    assert np.abs(obj).min() == pytest.approx(0.3, abs=1e-3)
    assert np.abs(obj).max() == pytest.approx(1.0, abs=1e-3)
    assert np.angle(obj).min() == pytest.approx(-1.2, abs=1e-3)
    assert np.angle(obj).max() == pytest.approx(1.2, abs=1e-3)
    # amplitude and phase come from different images
    assert abs(np.corrcoef(np.abs(obj).ravel(), np.angle(obj).ravel())[0, 1]) < 0.5


def test_probes_have_unit_power_and_the_expected_size(profile):
    g = profile.instrument.geometry()
    dx = g.object_pixel_size_m
    focused = make_ground_truth(profile.sim, g).probe
    assert np.sum(np.abs(focused) ** 2) == pytest.approx(1.0, rel=1e-5)
    # defocus spreads the beam: diameter ~ 2 * semi-angle * defocus = 1.8 um
    assert optics.probe_diameter_m(focused, dx) == pytest.approx(1.8e-6, rel=0.2)
    sim = profile.sim.model_copy(
        update={"probe": ProbeKind.PINHOLE, "pinhole_diameter_m": 1.5e-6, "pinhole_distance_m": 0.0}
    )
    pinhole = make_ground_truth(sim, g).probe
    assert np.sum(np.abs(pinhole) ** 2) == pytest.approx(1.0, rel=1e-5)
    assert optics.probe_diameter_m(pinhole, dx) == pytest.approx(1.5e-6 * np.sqrt(0.9), rel=0.1)


def test_far_field_conserves_energy(truth):
    wave = exit_wave(truth, (0.1e-6, -0.2e-6))
    assert diffraction_pattern(truth, (0.1e-6, -0.2e-6)).sum() == pytest.approx(
        np.sum(np.abs(wave) ** 2), rel=1e-5
    )


def test_position_outside_the_object_is_refused(truth):
    with pytest.raises(ValueError, match="outside the simulated object"):
        exit_wave(truth, (1.0, 0.0))


def test_aligned_truth_round_trip(truth):
    dx = truth.pixel_size_m
    origin = (truth.object_origin_m[0] + 5 * dx, truth.object_origin_m[1] - 3 * dx)
    out = truth.aligned_to((20, 20), origin)
    np.testing.assert_array_equal(out[:, 3:], truth.object[5:25, 0:17])
    assert not out[:, :3].any()  # outside the ground truth


def test_detector_noise_statistics():
    rng = np.random.default_rng(3)
    intensity = np.full((64, 64), 1.0 / 4096)  # 1e6 photons over 4096 pixels: mean 244
    det = DetectorModel(1e6, read_noise_counts=10.0, saturation_counts=None, rng=rng)
    counts = det.record(intensity)
    assert counts.dtype == np.float32
    assert counts.mean() == pytest.approx(244.14, rel=0.01)
    assert counts.var() == pytest.approx(244.14 + 100, rel=0.1)  # Poisson + read noise


def test_saturation_clips_and_noise_free_is_exact():
    intensity = np.zeros((8, 8))
    intensity[4, 4] = 1.0
    rng = np.random.default_rng(0)
    clipped = DetectorModel(1e6, 0.0, saturation_counts=5e4, rng=rng).record(intensity)
    assert clipped.max() == 5e4
    exact = DetectorModel(None, 10.0, None, rng=rng).record(intensity)
    assert exact[4, 4] == 1e6 and exact.sum() == 1e6


def test_same_seed_same_frames():
    intensity = np.full((16, 16), 1.0 / 256)
    a = DetectorModel(1e5, 10.0, None, np.random.default_rng(7)).record(intensity)
    b = DetectorModel(1e5, 10.0, None, np.random.default_rng(7)).record(intensity)
    np.testing.assert_array_equal(a, b)

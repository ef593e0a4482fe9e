"""The simulated detector: far-field diffraction of the ground truth and the noise model."""

import numpy as np
import pytest

from ptystream.sim.detector import DetectorModel, diffraction_pattern, exit_wave


def test_far_field_conserves_energy(truth):
    wave = exit_wave(truth, (0.1e-6, -0.2e-6))
    assert diffraction_pattern(truth, (0.1e-6, -0.2e-6)).sum() == pytest.approx(
        np.sum(np.abs(wave) ** 2), rel=1e-5
    )


def test_position_outside_the_object_is_refused(truth):
    with pytest.raises(ValueError, match="outside the simulated object"):
        exit_wave(truth, (1.0, 0.0))


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

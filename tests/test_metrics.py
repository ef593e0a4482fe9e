import numpy as np
import pytest

from ptystream.metrics import complex_correlation, fourier_shift
from ptystream.sim.sample import make_object


@pytest.fixture(scope="module")
def truth():
    return make_object(128, (0.3, 1.0), (-1.2, 1.2))


@pytest.fixture(scope="module")
def mask():
    m = np.zeros((128, 128), bool)
    m[30:100, 28:98] = True
    return m


def test_identical_is_one(truth, mask):
    c = complex_correlation(truth, truth, mask)
    assert c.abs_c == pytest.approx(1.0, abs=1e-9)
    assert c.amplitude == pytest.approx(1.0, abs=1e-9)
    assert c.phase == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("shift", [(0.3, -1.7), (2.5, 0.25), (-3.0, 4.4)])
def test_subpixel_shift_ramp_scale_and_global_phase_are_removed(truth, mask, shift):
    yy, xx = np.indices(truth.shape)
    ramp = (0.01, -0.02)
    moved = fourier_shift(truth, shift) * 3.0 * np.exp(1j * (0.7 + ramp[0] * yy + ramp[1] * xx))
    c = complex_correlation(moved, truth, mask)
    assert c.shift_px == pytest.approx((-shift[0], -shift[1]), abs=0.06)  # 1/20 px steps
    assert c.ramp_rad_per_px == pytest.approx(ramp, abs=2e-4)
    assert c.abs_c > 0.999
    assert c.amplitude > 0.995
    assert c.phase > 0.99


def test_unregistered_shift_scores_lower(truth, mask):
    moved = fourier_shift(truth, (0.0, 3.0))
    raw = complex_correlation(moved, truth, mask, register=False, remove_ramp=False)
    registered = complex_correlation(moved, truth, mask)
    assert raw.abs_c < registered.abs_c - 0.01
    assert raw.phase < 0.9


def test_flat_object_has_no_structure(truth, mask):
    c = complex_correlation(np.ones_like(truth), truth, mask, register=False)
    assert c.abs_c < 0.96  # the mean transmission dominates |C| ...
    assert abs(c.amplitude) < 1e-6  # ... but a flat amplitude correlates with nothing


def test_noise_lowers_every_measure(truth, mask):
    rng = np.random.default_rng(0)
    noisy = truth + 0.2 * (rng.normal(size=truth.shape) + 1j * rng.normal(size=truth.shape))
    c = complex_correlation(noisy, truth, mask)
    assert 0.85 < c.abs_c < 0.97
    assert c.amplitude < 0.8 and c.phase < 0.8


def test_shape_mismatch_is_named(truth, mask):
    with pytest.raises(ValueError, match="shapes differ"):
        complex_correlation(truth[:-1], truth, mask)

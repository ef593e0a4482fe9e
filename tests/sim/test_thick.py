"""The thick-sample simulation: its angular spectrum against analytic optics, its multislice model
against the thin one, and the problem it builds."""

import numpy as np
import pytest

from ptystream import optics
from ptystream.config import HC_EV_M
from ptystream.sim.detector import diffraction_pattern, exit_wave
from ptystream.sim.problems import DEFOCUS_M, ENERGY_EV, SEMI_ANGLE_RAD
from ptystream.sim.sample import GroundTruth
from ptystream.sim.thick import (
    MAX_SLICES,
    angular_spectrum_kernel,
    depth_of_focus_m,
    far_field_intensity,
    max_gap_m,
    multislice_exit_wave,
    propagate,
    thick_diffraction_pattern,
    thick_exit_wave,
    thick_far_field_problem,
    thick_sample,
)

WAVELENGTH_M = HC_EV_M / ENERGY_EV  # 8 keV, 0.155 nm
N = 64
DX_M = 50e-9
#: Probe centres (y, x, metres) with fractional pixel remainders, inside a 128² object.
POSITIONS_M = [(0.0, 0.0), (0.37 * DX_M, -1.81 * DX_M), (-5.5 * DX_M, 12.25 * DX_M)]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def layers() -> np.ndarray:
    """Two 128² layers in complex128, so the model is compared at float64 precision."""
    return thick_sample(128, 2).astype(np.complex128)


@pytest.fixture(scope="module")
def probe() -> np.ndarray:
    return optics.focused_probe(N, DX_M, WAVELENGTH_M, SEMI_ANGLE_RAD, DEFOCUS_M).astype(
        np.complex128
    )


def _truth(obj: np.ndarray, probe: np.ndarray) -> GroundTruth:
    origin = -(obj.shape[-1] // 2) * DX_M
    return GroundTruth(obj, probe, DX_M, (origin, origin))


# --- the angular spectrum ------------------------------------------------------------------


def test_the_kernel_is_one_at_zero_distance_and_propagation_conserves_power():
    assert np.array_equal(angular_spectrum_kernel(N, DX_M, WAVELENGTH_M, 0.0), np.ones((N, N)))
    rng = np.random.default_rng(1)
    field = rng.normal(size=(N, N)) + 1j * rng.normal(size=(N, N))  # in band: 1/λ >> 1/(2 dx)
    z = 0.5 * max_gap_m(N, DX_M, WAVELENGTH_M)
    out = propagate(field, z, DX_M, WAVELENGTH_M)
    power_in, power_out = np.sum(np.abs(field) ** 2), np.sum(np.abs(out) ** 2)
    assert abs(power_out - power_in) / power_in < 1e-12
    assert _rel(out, field) > 0.5  # it did propagate
    back = propagate(out, -z, DX_M, WAVELENGTH_M)
    assert _rel(back, field) < 1e-12


def test_the_kernel_cuts_evanescent_waves():
    """Visible light on a 100 nm grid: frequencies past 1/λ = 2e6 /m (Nyquist is 5e6 /m) are
    cut; those below keep unit modulus."""
    wavelength, dx = 500e-9, 100e-9
    kernel = angular_spectrum_kernel(N, dx, wavelength, 1e-6)
    f = np.fft.fftfreq(N, d=dx)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    assert np.all(kernel[f2 >= 1 / wavelength**2] == 0)
    assert np.allclose(np.abs(kernel[f2 < 1 / wavelength**2]), 1.0, atol=1e-14)
    # the propagating disc of radius 1/λ covers π (dx/λ)² of the grid
    assert np.mean(f2 >= 1 / wavelength**2) == pytest.approx(
        1 - np.pi * (dx / wavelength) ** 2, abs=0.01
    )


def test_the_kernel_phase_departs_from_fresnel_by_the_next_paraxial_term():
    """``2π z (sqrt(1/λ² - f²) - 1/λ) = -π λ z f² - (π/4) λ³ z f⁴ + O(λ⁵ f⁶)``: after taking out
    the Fresnel transfer function, the residual phase is the quartic term, to ``(λ f)²``."""
    z = max_gap_m(N, DX_M, WAVELENGTH_M)
    f = np.fft.fftfreq(N, d=DX_M)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    fresnel = np.exp(-1j * np.pi * WAVELENGTH_M * z * f2)
    residual = np.angle(angular_spectrum_kernel(N, DX_M, WAVELENGTH_M, z) * np.conj(fresnel))
    quartic = -np.pi / 4 * WAVELENGTH_M**3 * z * f2**2
    low = (f2 > 0) & (f2 < (0.25 / DX_M) ** 2)
    assert np.max(np.abs(residual[low] / quartic[low] - 1)) < 1e-5  # (λ f)² < 6e-7 here
    # over the whole grid the paraxial error is tiny for X-rays (< 1e-4 rad), and the full
    # phase is tens of radians: the cancellation-free form keeps the quartic term exact
    assert np.max(np.abs(residual - quartic)) < 1e-9
    assert np.max(np.pi * WAVELENGTH_M * z * f2) > 20


def test_a_gaussian_beam_spreads_as_the_analytic_one():
    """``exp(-r²/w0²)`` after ``z``: ``exp(-r² / (w0² (1 + i z/zR))) / (1 + i z/zR)`` with
    ``zR = π w0² / λ`` (exact under the paraxial kernel, which the angular spectrum matches to
    ~1e-8 rad at this beam's frequencies)."""
    w0 = 4 * DX_M
    z_r = np.pi * w0**2 / WAVELENGTH_M
    assert z_r < max_gap_m(N, DX_M, WAVELENGTH_M)
    c = (np.arange(N) - N // 2) * DX_M
    r2 = c[:, None] ** 2 + c[None, :] ** 2
    field = np.exp(-r2 / w0**2)
    q = 1 + 1j * 1.0  # z = zR
    expected = np.exp(-r2 / (w0**2 * q)) / q
    out = propagate(field, z_r, DX_M, WAVELENGTH_M)
    assert np.max(np.abs(out - expected)) < 1e-7
    assert np.max(np.abs(out)) == pytest.approx(1 / np.sqrt(2), rel=1e-7)  # peak drops by √2


def test_it_agrees_with_the_numpy_optics_of_the_package(probe):
    """Two independent implementations (centred grids there, unshifted here) of one kernel."""
    z = 300e-6
    theirs = optics.angular_spectrum(probe, DX_M, WAVELENGTH_M, z)
    assert _rel(propagate(probe, z, DX_M, WAVELENGTH_M), theirs) < 1e-10


def test_depth_of_focus_and_the_largest_gap():
    assert depth_of_focus_m(10e-9, 0.1e-9) == pytest.approx(5.4e-6)
    assert max_gap_m(128, 10e-9, 0.1e-9) == pytest.approx(128e-6)


# --- the multislice model ------------------------------------------------------------------


def test_one_slice_is_the_thin_model(layers, probe):
    thin = _truth(layers[0], probe)
    thick = _truth(layers[:1], probe)
    for p in POSITIONS_M:
        assert _rel(thick_exit_wave(thick, p, [], WAVELENGTH_M), exit_wave(thin, p)) < 1e-12
        pattern = thick_diffraction_pattern(thick, p, [], WAVELENGTH_M)
        assert _rel(pattern, diffraction_pattern(thin, p)) < 1e-10
        assert pattern.sum() == pytest.approx(np.sum(np.abs(exit_wave(thin, p)) ** 2), rel=1e-12)


def test_two_slices_with_no_gap_are_one_slice_of_their_product(layers, probe):
    thick = _truth(layers, probe)
    product = _truth(np.prod(layers, axis=0)[None], probe)
    for p in POSITIONS_M:
        two = thick_diffraction_pattern(thick, p, [0.0], WAVELENGTH_M)
        one = thick_diffraction_pattern(product, p, [], WAVELENGTH_M)
        assert _rel(two, one) < 1e-10


def test_the_exit_wave_propagates_between_slices_and_not_after_the_last(probe):
    """Unit slices: the exit wave is the probe propagated by the sum of the gaps."""
    ones = np.ones((3, N, N))
    out = multislice_exit_wave(ones, probe, [100e-6, 250e-6], DX_M, WAVELENGTH_M)
    assert _rel(out, propagate(probe, 350e-6, DX_M, WAVELENGTH_M)) < 1e-12
    assert _rel(far_field_intensity(out), far_field_intensity(probe)) < 1e-12
    with pytest.raises(ValueError, match="3 slices need 2 gaps, got 1"):
        multislice_exit_wave(ones, probe, [1e-6], DX_M, WAVELENGTH_M)


def test_the_far_field_is_centred_and_orthonormal(probe):
    intensity = far_field_intensity(np.ones((N, N)) / N)
    assert intensity[N // 2, N // 2] == pytest.approx(1.0)
    assert intensity.sum() == pytest.approx(1.0)
    assert _rel(far_field_intensity(probe), np.abs(optics.fft2c(probe)) ** 2) < 1e-12


# --- the thick sample ----------------------------------------------------------------------


def test_thick_sample_layers_are_different_weak_objects():
    sample = thick_sample(64, 8)
    assert sample.shape == (8, 64, 64) and sample.dtype == np.complex64
    assert np.array_equal(sample, thick_sample(64, 8))  # deterministic
    amplitude, phase = np.abs(sample), np.angle(sample)
    assert amplitude.min() >= 0.8 - 1e-6 and amplitude.max() <= 1.0 + 1e-6
    assert phase.min() >= -0.5 - 1e-6 and phase.max() <= 0.5 + 1e-6
    # pairs of layers at most share 16 % (phase) and 27 % (amplitude) of their variance
    for values, most in ((phase, 0.45), (amplitude, 0.6)):
        corr = np.corrcoef(values.reshape(8, -1))
        np.fill_diagonal(corr, 0.0)
        assert np.max(np.abs(corr)) < most
    with pytest.raises(ValueError, match=f"n_slices must be 1 to {MAX_SLICES}, got 0"):
        thick_sample(64, 0)


# --- the problem ---------------------------------------------------------------------------


def _noise_free(**kwargs):
    return thick_far_field_problem(64, 9, peak_counts=None, read_noise_counts=0.0, **kwargs)


@pytest.fixture(scope="module")
def small():
    return thick_far_field_problem(64, 9, n_slices=3, spacing_m=[50e-6, 80e-6], seed=2)


def test_the_problem_has_frames_positions_and_a_thick_truth(small):
    assert small.frames.shape == (9, 64, 64) and small.frames.dtype == np.float32
    assert small.positions_m.shape == (9, 2)
    assert small.truth.object.shape[0] == 3 and small.truth.object.dtype == np.complex64
    assert small.truth.probe.shape == (64, 64)
    assert small.geometry.frame_px == 64 and small.geometry.propagation == "far_field"
    dx, wavelength = small.truth.pixel_size_m, small.geometry.wavelength_m
    details = small.details
    assert details["multislice"] is True and details["propagation"] == "far_field"
    assert details["n_slices"] == 3 and details["slice_gaps_m"] == [50e-6, 80e-6]
    assert details["depth_of_focus_m"] == pytest.approx(5.4 * dx**2 / wavelength)
    assert details["max_gap_m"] == pytest.approx(64 * dx**2 / wavelength)
    assert small.probe_defocus_m == pytest.approx(1.1 * details["probe_defocus_m"])
    # the noise is scaled to the peak count (500, Poisson plus read noise of 10)
    assert 400 < small.frames.max() < 650


def test_a_seed_fixes_the_problem(small):
    again = thick_far_field_problem(64, 9, n_slices=3, spacing_m=[50e-6, 80e-6], seed=2)
    assert np.array_equal(again.frames, small.frames)
    assert np.array_equal(again.positions_m, small.positions_m)
    other = thick_far_field_problem(64, 9, n_slices=3, spacing_m=[50e-6, 80e-6], seed=3)
    assert not np.array_equal(other.positions_m, small.positions_m)


def test_noise_free_frames_are_the_thick_patterns_and_one_slice_ignores_the_spacing():
    problem = _noise_free(spacing_m=120e-6)
    gaps, wavelength = problem.details["slice_gaps_m"], problem.geometry.wavelength_m
    expected = np.stack(
        [
            1e6 * thick_diffraction_pattern(problem.truth, p, gaps, wavelength)
            for p in problem.positions_m
        ]
    )
    assert _rel(problem.frames, expected) < 1e-6  # float32 frames
    one = _noise_free(n_slices=1, spacing_m=500e-6)
    assert np.array_equal(one.frames, _noise_free(n_slices=1, spacing_m=0.0).frames)
    thin = GroundTruth(
        one.truth.object[0], one.truth.probe, one.truth.pixel_size_m, one.truth.object_origin_m
    )
    expected = np.stack([1e6 * diffraction_pattern(thin, p) for p in one.positions_m])
    assert _rel(one.frames, expected) < 1e-6


def test_bad_gaps_are_refused():
    limit = thick_far_field_problem(64, 4, n_slices=1).details["max_gap_m"]  # 1.72 mm
    with pytest.raises(ValueError, match=r"slice gaps \[-1e-06\] m are outside"):
        thick_far_field_problem(64, 4, spacing_m=-1e-6)
    with pytest.raises(
        ValueError, match=r"slice gaps \[0.002\] m are outside \[0, N dx²/λ = 0.001722 m\]"
    ):
        thick_far_field_problem(64, 4, spacing_m=2e-3)
    assert limit < 2e-3
    with pytest.raises(ValueError, match=r"3 slices need 2 spacings, got 1: \[1e-05\]"):
        thick_far_field_problem(64, 4, n_slices=3, spacing_m=[10e-6])
    with pytest.raises(ValueError, match=r"sample must be \(2, H, W\)"):
        thick_far_field_problem(64, 4, sample=np.ones((3, 200, 200), np.complex64))


@pytest.mark.parametrize(("gap_in_depths", "low", "high"), [(1e-5, 0.0, 1e-5), (3.0, 0.1, 1.0)])
def test_the_sample_is_thick_only_when_its_gap_exceeds_the_depth_of_focus(gap_in_depths, low, high):
    """Two slices against one of their product (same positions): the same patterns when the gap
    is a tiny fraction of the depth of focus, measurably different at three depths."""
    depth = thick_far_field_problem(64, 4, n_slices=1).details["depth_of_focus_m"]  # 145 µm
    two = _noise_free(spacing_m=gap_in_depths * depth)
    product = np.prod(two.truth.object.astype(np.complex128), axis=0)[None]
    one = _noise_free(n_slices=1, sample=product)
    assert np.array_equal(one.positions_m, two.positions_m)
    assert low <= _rel(two.frames, one.frames) < high

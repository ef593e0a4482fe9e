import numpy as np
import pytest

from ptystream.metrics import (
    WELL_LIT_FRACTION,
    complex_correlation,
    fourier_ring_correlation,
    fourier_shift,
    half_bit_resolution,
    half_set_frc,
    score_against_truth,
    score_over,
    well_lit_mask,
)
from ptystream.sim.sample import GroundTruth, make_object
from ptystream.types import Estimate


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


@pytest.fixture(scope="module")
def ground_truth() -> GroundTruth:
    """A truth with a position (for scoring estimates on their own canvas)."""
    obj = make_object(160, (0.3, 1.0), (-1.2, 1.2))
    return GroundTruth(obj, np.ones((16, 16), np.complex64), 1e-8, (-80e-8, -80e-8))


def _estimate(ground_truth: GroundTruth, shift_px=(0.0, 0.0), phase=0.0) -> Estimate:
    """The ground_truth moved by ``shift_px`` with a global phase, on a canvas of 120² offset by
    (10, 30) px, lit by a disc of radius 40 px at the canvas centre."""
    origin = (ground_truth.object_origin_m[0] + 10e-8, ground_truth.object_origin_m[1] + 30e-8)
    obj = ground_truth.aligned_to((120, 120), origin)
    obj = fourier_shift(obj, shift_px) * np.exp(1j * phase)
    yy, xx = np.indices((120, 120))
    illumination = np.exp(-((yy - 60.0) ** 2 + (xx - 60.0) ** 2) / (2 * 30.0**2))
    return Estimate(
        object=obj.astype(np.complex64),
        probe=ground_truth.probe,
        object_origin_m=origin,
        pixel_size_m=ground_truth.pixel_size_m,
        positions_m=np.zeros((1, 2)),
        illumination=illumination.astype(np.float32),
        iteration=0,
        n_frames=1,
        loss=np.zeros((0, 2)),
    )


def test_well_lit_mask_is_the_region_score_against_truth_scores(ground_truth):
    est = _estimate(ground_truth)
    mask = well_lit_mask(est)
    np.testing.assert_array_equal(
        mask, est.illumination > WELL_LIT_FRACTION * est.illumination.max()
    )
    assert well_lit_mask(est, 0.1).sum() > mask.sum()


def test_score_over_the_well_lit_region_is_score_against_truth(ground_truth):
    est = _estimate(ground_truth, shift_px=(0.4, -1.3), phase=0.7)
    c, flat = score_over(est, ground_truth, well_lit_mask(est))
    c_ref, flat_ref = score_against_truth(est, ground_truth)
    assert c == c_ref
    assert flat == flat_ref
    assert c.abs_c == pytest.approx(1.0, abs=1e-3)
    assert flat < c.abs_c


def test_cropping_to_the_mask_keeps_the_measure(ground_truth):
    est = _estimate(ground_truth, shift_px=(0.4, -1.3), phase=0.7)
    noisy = est.object + 0.05 * np.random.default_rng(0).standard_normal(est.object.shape)
    est = Estimate(**{**est.__dict__, "object": noisy.astype(np.complex64)})
    mask = np.zeros((120, 120), bool)
    mask[40:80, 35:90] = True
    full, flat_full = score_over(est, ground_truth, mask)
    cropped, flat_cropped = score_over(est, ground_truth, mask, crop_margin_px=16)
    assert cropped.abs_c == pytest.approx(full.abs_c, abs=1e-3)
    assert cropped.phase == pytest.approx(full.phase, abs=1e-2)
    assert cropped.shift_px == pytest.approx(full.shift_px, abs=0.05)
    assert flat_cropped == pytest.approx(flat_full, abs=1e-12)  # no registration: the same


def test_cropping_stops_at_the_canvas_edge(ground_truth):
    est = _estimate(ground_truth)
    mask = np.zeros((120, 120), bool)
    mask[2:30, 100:119] = True
    c, _ = score_over(est, ground_truth, mask, crop_margin_px=16)
    assert c.abs_c == pytest.approx(1.0, abs=1e-6)


def _band_limited(shape, cutoff_per_px, rng):
    """White noise low-passed to ``cutoff_per_px`` cycles per pixel (a hard disc in Fourier)."""
    fy, fx = np.meshgrid(*(np.fft.fftfreq(n) for n in shape), indexing="ij")
    spectrum = np.fft.fft2(rng.normal(size=shape)) * (np.hypot(fy, fx) < cutoff_per_px)
    image = np.fft.ifft2(spectrum).real
    return image / image.std()


def test_ring_correlation_finds_the_band_limit_of_two_noisy_copies():
    """Two copies of an image band-limited at 1/8 cycles per pixel, each with its own white
    noise (SNR 1 per pixel overall, high inside the band): the FRC falls below the half-bit
    threshold at the band's edge, a period of 8 px; identical images never fall."""
    rng = np.random.default_rng(0)
    signal = _band_limited((128, 128), 1 / 8, rng)
    a = signal + 0.5 * rng.normal(size=signal.shape)
    b = signal + 0.5 * rng.normal(size=signal.shape)
    result = fourier_ring_correlation(a, b)
    assert 7.0 < result.resolution_px < 9.0, result.resolution_px
    assert result.frc[5] > 0.9 and abs(result.frc[40]) < 0.2  # 5/128 inside, 40/128 outside
    assert fourier_ring_correlation(a, a).resolution_px == 2.0  # Nyquist: never below
    coarse = _band_limited((128, 128), 1 / 16, rng)
    pair = [coarse + 0.5 * rng.normal(size=coarse.shape) for _ in range(2)]
    assert 14.0 < fourier_ring_correlation(*pair).resolution_px < 18.0  # a band half as wide


def test_half_set_frc_ignores_what_ptychography_cannot_fix():
    """The second half's reconstruction shifted by a fraction of a pixel, with a phase ramp
    and a global phase: its phase FRC against the first matches the one without them. The
    phase is band-limited at a period of 6 px; the taper spreads its edge a little, so the
    crossing lands just inside it (5.2 px measured; 4.8 px with a third of the noise)."""
    rng = np.random.default_rng(1)
    phase = 0.8 * _band_limited((96, 96), 1 / 6, rng)
    truth = np.exp(1j * phase)
    first = truth * np.exp(1j * 0.3 * rng.normal(size=truth.shape))
    second = truth * np.exp(1j * 0.3 * rng.normal(size=truth.shape))
    mask = np.zeros(truth.shape, bool)
    mask[16:80, 16:80] = True
    plain = half_set_frc(first, second, mask)
    yy, xx = np.indices(truth.shape)
    moved = fourier_shift(second, (0.4, -0.7)) * np.exp(1j * (0.05 * yy - 0.03 * xx + 2.0))
    result = half_set_frc(first, moved, mask)
    assert 4.5 < plain.resolution_px < 6.5, plain.resolution_px
    assert result.resolution_px == pytest.approx(plain.resolution_px, rel=0.02)
    assert half_set_frc(first, first, mask).resolution_px == 2.0  # identical: never below
    with pytest.raises(ValueError, match="part must be"):
        half_set_frc(first, second, mask, part="real")


def test_ring_correlation_counts_a_fall_from_above_the_threshold_only():
    """The lowest rings can start below the threshold (a large-scale difference between the
    halves); the resolution is where the FRC falls after it has risen above, not that first
    ring; images that never agree above it (one the negative of the other): infinite."""
    rng = np.random.default_rng(2)
    signal = _band_limited((128, 128), 1 / 8, rng)
    yy, xx = np.indices(signal.shape)
    slope = 3.0 * np.cos(2 * np.pi * yy / 128)  # one period across: ring 1 only
    a = signal + 0.5 * rng.normal(size=signal.shape) + slope
    b = signal + 0.5 * rng.normal(size=signal.shape) - slope
    result = fourier_ring_correlation(a, b)
    assert result.frc[1] < result.threshold[1]  # the first ring disagrees ...
    assert 7.0 < result.resolution_px < 9.0, result.resolution_px  # ... the band still counts
    assert fourier_ring_correlation(a, -a).resolution_px == np.inf


def test_the_resolution_is_the_end_of_the_widest_band_above_the_threshold():
    """The FRC also falls where the sample has little power or the halves drift slowly apart
    (measured on the star benchmark's halves: the amplitude agrees in the lowest rings, falls
    at 40-70 px periods, then agrees again to its resolution). The resolution is the end of
    the widest band above the threshold, wherever it starts; a band to the last ring:
    Nyquist; no ring above: infinite."""
    frequency = np.arange(65) / 128
    threshold = np.full(65, 0.3)
    frc = np.full(65, 0.9)
    frc[6:10] = 0.0  # rings 1-5 above (the large scale), 6-9 below
    frc[40:] = 0.1  # the band from ring 10 to 39, then below: crossing at ring 39.75
    assert half_bit_resolution(frequency, frc, threshold) == pytest.approx(128 / 39.75)
    frc[20:40] = 0.0  # the band is rings 10-19, still wider than 1-5: crossing at 19 + 2/3
    assert half_bit_resolution(frequency, frc, threshold) == pytest.approx(128 / (19 + 2 / 3))
    frc[14:20] = 0.0  # rings 10-13 now narrower than 1-5: the lowest band, to ring 5 + 2/3
    assert half_bit_resolution(frequency, frc, threshold) == pytest.approx(128 / (5 + 2 / 3))
    assert half_bit_resolution(frequency, np.full(65, 0.9), threshold) == 2.0
    assert half_bit_resolution(frequency, np.zeros(65), threshold) == np.inf

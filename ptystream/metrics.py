"""Quality measures for reconstructions (numpy; scipy for the FRC's taper).

The complex correlation follows the TensorFlow AD ptychography paper: ``|C| = |sum a b*| /
sqrt(sum |a|^2 sum |b|^2)`` over a region, after the estimate is registered to the truth with
sub-pixel precision. Registration uses a smooth window with the means removed, because a hard
mask biases the shift towards the mask's own edge.

Ptychography with a reconstructed probe cannot determine a linear phase ramp of the object (the
probe takes the opposite ramp and every diffraction pattern is unchanged), nor a global phase, so
both are fitted and removed before the measures are taken.

Without a ground truth (real data), :func:`half_set_frc` compares two reconstructions of
disjoint halves of one scan by Fourier ring correlation and reports the half-bit resolution.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from ptystream.types import Estimate

__all__ = [
    "Correlation",
    "RingCorrelation",
    "fourier_ring_correlation",
    "half_bit_resolution",
    "half_set_frc",
    "Truth",
    "complex_correlation",
    "fourier_shift",
    "register_shift",
    "score_against_truth",
    "score_over",
    "score_slices",
    "taper",
    "well_lit_mask",
]


@dataclass(frozen=True)
class Correlation:
    """Result of :func:`complex_correlation`.

    Attributes
    ----------
    abs_c : ``|C|`` of the complex fields, in [0, 1]; invariant to a global phase and scale.
    amplitude : Pearson correlation of the amplitudes, in [-1, 1].
    phase : Pearson correlation of the phases after the global phase is removed, in [-1, 1].
    shift_px : ``(dy, dx)`` by which the estimate was moved to match the truth.
    global_phase_rad : phase removed from the estimate.
    ramp_rad_per_px : ``(gy, gx)`` linear phase ramp removed from the estimate.
    """

    abs_c: float
    amplitude: float
    phase: float
    shift_px: tuple[float, float]
    global_phase_rad: float
    ramp_rad_per_px: tuple[float, float]


def fourier_shift(image: np.ndarray, shift_px: tuple[float, float]) -> np.ndarray:
    """Circularly shift ``image`` by a ``(dy, dx)``; positive moves content down/right."""
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.fftfreq(image.shape[1])[None, :]
    ramp = np.exp(-2j * np.pi * (fy * shift_px[0] + fx * shift_px[1]))
    out = np.fft.ifft2(np.fft.fft2(image) * ramp)
    return out if np.iscomplexobj(image) else out.real


def _smooth_window(mask: np.ndarray, sigma_px: float) -> np.ndarray:
    """The mask blurred by a Gaussian and then cut to the mask: 1 inside, tapering at its edge."""
    fy = np.fft.fftfreq(mask.shape[0])[:, None]
    fx = np.fft.fftfreq(mask.shape[1])[None, :]
    kernel = np.exp(-2 * (np.pi * sigma_px) ** 2 * (fy**2 + fx**2))
    blurred = np.fft.ifft2(np.fft.fft2(mask.astype(float)) * kernel).real
    return np.clip(blurred, 0, 1) * mask


def _upsampled_dft(data: np.ndarray, size: int, factor: int, offsets: np.ndarray) -> np.ndarray:
    """Matrix-multiply DFT of ``data`` on a ``size x size`` grid upsampled by ``factor``.

    Guizar-Sicairos, Thurman and Fienup, Opt. Lett. 33, 156 (2008).
    """
    rows, cols = data.shape
    col_kernel = np.exp(
        (-2j * np.pi / (cols * factor))
        * (np.fft.ifftshift(np.arange(cols))[:, None] - np.floor(cols / 2))
        * (np.arange(size)[None, :] - offsets[1])
    )
    row_kernel = np.exp(
        (-2j * np.pi / (rows * factor))
        * (np.arange(size)[:, None] - offsets[0])
        * (np.fft.ifftshift(np.arange(rows))[None, :] - np.floor(rows / 2))
    )
    return row_kernel @ data @ col_kernel


def register_shift(
    moving: np.ndarray, reference: np.ndarray, window: np.ndarray, upsample: int = 20
) -> tuple[float, float]:
    """Sub-pixel shift ``(dy, dx)`` that, applied to ``moving``, best matches ``reference``.

    Both images are weighted by ``window`` after their weighted means are removed.
    """

    def prepare(a: np.ndarray) -> np.ndarray:
        mean = np.sum(a * window) / np.sum(window)
        return (a - mean) * window

    spec_m = np.fft.fft2(prepare(moving))
    spec_r = np.fft.fft2(prepare(reference))
    product = spec_r * np.conj(spec_m)
    xcorr = np.abs(np.fft.ifft2(product))
    peak = np.array(np.unravel_index(np.argmax(xcorr), xcorr.shape), dtype=float)
    shape = np.array(xcorr.shape)
    peak[peak > shape // 2] -= shape[peak > shape // 2]
    size = int(np.ceil(upsample * 1.5))
    offsets = size // 2 - peak * upsample
    fine = np.abs(_upsampled_dft(np.conj(product), size, upsample, offsets))
    fine_peak = np.array(np.unravel_index(np.argmax(fine), fine.shape), dtype=float)
    shift = peak + (fine_peak - size // 2) / upsample
    return float(shift[0]), float(shift[1])


def _fit_phase_ramp(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Linear phase ``(gy, gx)`` in rad/px of ``estimate * conj(truth)`` over ``mask``.

    A coarse ramp comes from the peak of the zero-padded spectrum of the product (robust to phase
    wrapping); two amplitude-weighted least-squares passes on the residual phase refine it.
    """
    product = np.where(mask, estimate * np.conj(truth), 0)
    pad = [4 * n for n in product.shape]
    spectrum = np.abs(np.fft.fft2(product, s=pad))
    peak = np.unravel_index(np.argmax(spectrum), spectrum.shape)
    ramp = np.array([2 * np.pi * np.fft.fftfreq(n)[k] for n, k in zip(pad, peak, strict=True)])
    yy, xx = np.nonzero(mask)
    weights = np.sqrt(np.abs(product[yy, xx]))
    design = np.stack([yy, xx, np.ones_like(yy)], axis=1).astype(float)
    for _ in range(2):
        residual = np.angle(product[yy, xx] * np.exp(-1j * (ramp[0] * yy + ramp[1] * xx)))
        residual = np.angle(np.exp(1j * (residual - np.angle(np.sum(np.exp(1j * residual))))))
        coef = np.linalg.lstsq(design * weights[:, None], residual * weights, rcond=None)[0]
        ramp = ramp + coef[:2]
    return ramp


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt(np.sum(a * a) * np.sum(b * b))
    # A constant (up to rounding) correlates with nothing.
    return float(np.sum(a * b) / denom) if denom > 1e-9 * a.size else 0.0


def complex_correlation(
    estimate: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    *,
    register: bool = True,
    remove_ramp: bool = True,
) -> Correlation:
    """Compare a complex estimate with the truth over ``mask`` (same shape, same pixel size).

    The estimate is first shifted (sub-pixel) onto the truth; then its linear phase ramp and its
    global phase are removed. The mask should cover only well-illuminated pixels: elsewhere
    nothing was measured.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> truth = np.exp(1j * rng.uniform(0, 1, (64, 64)))
    >>> mask = np.zeros((64, 64), bool); mask[16:48, 16:48] = True
    >>> round(complex_correlation(2j * truth, truth, mask).abs_c, 6)
    1.0
    """
    if estimate.shape != truth.shape or mask.shape != truth.shape:
        raise ValueError(
            f"shapes differ: estimate {estimate.shape}, truth {truth.shape}, mask {mask.shape}"
        )
    mask = mask.astype(bool)
    if mask.sum() < 4:
        raise ValueError("the mask selects fewer than 4 pixels")
    est = estimate.astype(np.complex128)
    ref = truth.astype(np.complex128)
    shift = (0.0, 0.0)
    ramp = np.zeros(2)
    yy, xx = np.indices(est.shape)
    window = _smooth_window(mask, sigma_px=max(2.0, 0.05 * np.sqrt(mask.sum())))
    # A ramp weakens the cross-correlation and a shift biases the ramp: alternate. The window
    # biases a large shift towards zero, so each pass registers what is left after the last.
    for _ in range(3 if register or remove_ramp else 0):
        deramped = est * np.exp(-1j * (ramp[0] * yy + ramp[1] * xx))
        if register:
            residual = register_shift(fourier_shift(deramped, shift), ref, window)
            shift = (shift[0] + residual[0], shift[1] + residual[1])
        if remove_ramp:
            ramp = _fit_phase_ramp(fourier_shift(est, shift), ref, mask)
    est = fourier_shift(est, shift) * np.exp(-1j * (ramp[0] * yy + ramp[1] * xx))
    a, b = est[mask], ref[mask]
    inner = np.sum(a * np.conj(b))
    abs_c = float(np.abs(inner) / np.sqrt(np.sum(np.abs(a) ** 2) * np.sum(np.abs(b) ** 2)))
    global_phase = float(np.angle(inner))
    a = a * np.exp(-1j * global_phase)
    return Correlation(
        abs_c=abs_c,
        amplitude=_pearson(np.abs(a), np.abs(b)),
        phase=_pearson(np.angle(a), np.angle(b)),
        shift_px=shift,
        global_phase_rad=global_phase,
        ramp_rad_per_px=(float(ramp[0]), float(ramp[1])),
    )


@dataclass(frozen=True)
class RingCorrelation:
    """Result of :func:`fourier_ring_correlation`.

    Attributes
    ----------
    frequency_per_px : ring centres, cycles per pixel (0 to 0.5).
    frc : the correlation in each ring, in [-1, 1].
    threshold : the half-bit threshold for each ring's pixel count (van Heel and Schatz 2005).
    resolution_px : :func:`half_bit_resolution` of the curve: the period in pixels where
        the FRC falls below the threshold at the end of its widest band above it.
        Half-period resolution is half this.
    """

    frequency_per_px: np.ndarray
    frc: np.ndarray
    threshold: np.ndarray
    resolution_px: float


def fourier_ring_correlation(
    a: np.ndarray, b: np.ndarray, window: np.ndarray | None = None
) -> RingCorrelation:
    """FRC of two real images of the same shape (two independent reconstructions of one
    sample, aligned), each weighted by ``window`` (a smooth taper: a hard edge spreads power to
    every frequency) after its weighted mean is removed. Rings are one pixel of the shorter
    side's spectrum wide, up to Nyquist; what resolution a reconstruction supports without a
    ground truth."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    w = np.ones(a.shape) if window is None else window

    def prepare(x: np.ndarray) -> np.ndarray:
        return (x - np.sum(x * w) / np.sum(w)) * w

    fa, fb = np.fft.fft2(prepare(a)), np.fft.fft2(prepare(b))
    fy, fx = np.meshgrid(*(np.fft.fftfreq(n) for n in a.shape), indexing="ij")
    ring = np.rint(np.hypot(fy, fx) * min(a.shape)).astype(int)
    n_rings = min(a.shape) // 2 + 1
    inside = ring < n_rings

    def per_ring(values: np.ndarray) -> np.ndarray:
        return np.bincount(ring[inside], values[inside], minlength=n_rings)

    cross = per_ring(np.real(fa * np.conj(fb)))
    power = np.sqrt(per_ring(np.abs(fa) ** 2) * per_ring(np.abs(fb) ** 2))
    frc = np.divide(cross, power, out=np.zeros(n_rings), where=power > 0)
    count = np.maximum(per_ring(np.ones(a.shape)), 1.0)
    root = np.sqrt(count)
    threshold = (0.2071 + 1.9102 / root) / (1.2071 + 0.9102 / root)
    frequency = np.arange(n_rings) / min(a.shape)
    return RingCorrelation(
        frequency, frc, threshold, half_bit_resolution(frequency, frc, threshold)
    )


def half_bit_resolution(
    frequency_per_px: np.ndarray, frc: np.ndarray, threshold: np.ndarray
) -> float:
    """The period ``1 / f`` in pixels where ``frc`` falls below ``threshold`` at the end of
    the widest band of rings above it (linear between rings); 2.0 (Nyquist) when that band
    reaches the last ring; inf when no ring is above it (the two share nothing).

    Why the widest band, not the first fall: the FRC also falls where the sample has little
    power or where the halves' slow phase drifts differ, below the band where they agree.
    Measured on ``benchmarks/star_frc.py``'s halves: the amplitude agrees in the lowest five
    rings (the star's disc), falls at periods of 40-70 px (a Siemens star has little power
    there), and agrees again from 0.035 cycles per pixel to its resolution; the phase can rise
    for a ring or two and dip at 30-130 px before its band. Ring 0 (the mean, removed) never
    counts. Of bands equally wide, the lowest (the coarser reading). A single ring dipping
    inside the main band splits it, as the usual first-crossing reading would stop there."""
    above = np.asarray(frc) >= np.asarray(threshold)
    above[0] = False
    if not above.any():
        return float("inf")
    edges = np.diff(np.concatenate([[0], above.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    widest = int(np.argmax(ends - starts))
    k = int(ends[widest])  # the first ring under the threshold after the band
    if k == above.size:
        return 2.0
    gap_before, gap_at = frc[k - 1] - threshold[k - 1], frc[k] - threshold[k]
    t = gap_before / (gap_before - gap_at) if gap_before > gap_at else 0.0
    crossing = frequency_per_px[k - 1] + t * (frequency_per_px[k] - frequency_per_px[k - 1])
    return float(max(1.0 / crossing, 2.0))


def half_set_frc(
    first: np.ndarray, second: np.ndarray, mask: np.ndarray, part: str = "phase"
) -> RingCorrelation:
    """FRC of two complex reconstructions of one sample from disjoint halves of a scan (same
    grid): ``second`` is registered onto ``first`` (sub-pixel) and its phase ramp and global
    phase removed (:func:`complex_correlation`), then the ``part`` (``phase`` or
    ``amplitude``) of each is compared over ``mask``'s bounding box, tapered to 0 at the
    mask's edge (:func:`taper`)."""
    if part not in ("phase", "amplitude"):
        raise ValueError(f"part must be 'phase' or 'amplitude', not {part!r}")
    mask = mask.astype(bool)
    match = complex_correlation(second, first, mask)
    yy, xx = np.indices(second.shape)
    gy, gx = match.ramp_rad_per_px
    aligned = fourier_shift(second.astype(np.complex128), match.shift_px)
    aligned = aligned * np.exp(-1j * (gy * yy + gx * xx + match.global_phase_rad))
    # the pair's own ramp and phase (arbitrary in ptychography) off both, so the phase does not
    # wrap across the region
    ry, rx = _fit_phase_ramp(first, np.ones_like(first), mask)
    flat = np.exp(-1j * (ry * yy + rx * xx))
    offset = np.exp(-1j * np.angle(np.sum((first * flat)[mask])))
    first, aligned = first * flat * offset, aligned * flat * offset
    rows, cols = np.nonzero(mask)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    take = np.angle if part == "phase" else np.abs
    return fourier_ring_correlation(take(first[box]), take(aligned[box]), taper(mask[box]))


def taper(mask: np.ndarray) -> np.ndarray:
    """1 well inside ``mask``, falling smoothly to 0 at its edge and 0 outside: the mask shrunk
    by two widths of a Gaussian and blurred by it (width 5 % of the region's side, at least 2
    px), so neither the mask's edge nor the array's adds power the two images share."""
    from scipy import ndimage

    sigma = max(2.0, 0.05 * np.sqrt(mask.sum()))
    inner = ndimage.binary_erosion(mask, iterations=int(np.ceil(2 * sigma)))
    return ndimage.gaussian_filter(inner.astype(float), sigma, mode="constant") * mask


class Truth(Protocol):
    """A ground truth that can be sampled on an estimate's grid (as
    :class:`ptystream.sim.sample.GroundTruth` is)."""

    def aligned_to(self, shape: tuple[int, int], origin_m: tuple[float, float]) -> np.ndarray:
        """The true object on a grid of ``shape`` whose pixel ``[0, 0]`` is at ``origin_m``."""
        ...


#: Pixels whose summed probe intensity is above this fraction of its maximum are scored.
WELL_LIT_FRACTION = 0.3


def score_against_truth(estimate: Estimate, truth: Truth) -> tuple[Correlation, float]:
    """|C| of ``estimate`` against ``truth`` over the well-lit region (illumination above
    ``WELL_LIT_FRACTION`` of its maximum), and the |C| a flat object would score there (the
    baseline: the mean transmission alone scores well above 0)."""
    return score_over(estimate, truth, well_lit_mask(estimate))


def well_lit_mask(estimate: Estimate, fraction: float = WELL_LIT_FRACTION) -> np.ndarray:
    """Pixels of ``estimate``'s canvas whose summed probe intensity is above ``fraction`` of its
    maximum: the region :func:`score_against_truth` scores."""
    return estimate.illumination > fraction * estimate.illumination.max()


def score_over(
    estimate: Estimate, truth: Truth, mask: np.ndarray, *, crop_margin_px: int | None = None
) -> tuple[Correlation, float]:
    """|C| of ``estimate`` against ``truth`` over ``mask`` (on the estimate's canvas), and the
    |C| a flat object scores there (as :func:`score_against_truth`, over any region).

    With ``crop_margin_px``, the arrays are first cropped to the mask's bounding box plus that
    many pixels on each side (clipped at the canvas): the registration's FFTs then run on the
    scanned region only, several times faster on a large canvas. The registration then sees
    another border, so the result can differ slightly from the uncropped one; the flat
    object's |C| (no registration) is the same.
    """
    aligned = truth.aligned_to(estimate.object.shape, estimate.object_origin_m)
    obj = estimate.object
    if crop_margin_px is not None:
        rows, cols = np.nonzero(mask)
        m = crop_margin_px
        crop = (
            slice(max(rows.min() - m, 0), rows.max() + m + 1),
            slice(max(cols.min() - m, 0), cols.max() + m + 1),
        )
        aligned, obj, mask = aligned[crop], obj[crop], mask[crop]
    flat = complex_correlation(np.ones_like(aligned), aligned, mask, register=False).abs_c
    return complex_correlation(obj, aligned, mask), flat


def score_slices(
    estimate: Estimate, truth: Truth, mask: np.ndarray | None = None
) -> tuple[list[Correlation], Correlation, float]:
    """A multislice estimate (``object`` ``(S, H, W)``) against a thick truth (``object``
    ``(S, H', W')``, a dataclass such as :class:`ptystream.sim.sample.GroundTruth`): each
    slice's |C| against its own layer, the |C| of the product of the slices against the
    product of the layers (what a thin reconstruction can at best recover), and the flat
    object's |C| against that product; over ``mask`` (default: the well-lit region)."""
    if mask is None:
        mask = well_lit_mask(estimate)
    slices = np.asarray(estimate.object)
    layers = np.asarray(truth.object)  # type: ignore[attr-defined]
    if slices.ndim != 3 or layers.shape[0] != slices.shape[0]:
        raise ValueError(f"estimate slices {slices.shape} do not match truth layers {layers.shape}")

    def one(obj: np.ndarray, layer: np.ndarray) -> tuple[Correlation, float]:
        e = dataclasses.replace(estimate, object=obj)
        t = dataclasses.replace(truth, object=layer)  # type: ignore[type-var]
        return score_over(e, t, mask)

    per_slice = [one(obj, layer)[0] for obj, layer in zip(slices, layers, strict=True)]
    product, flat = one(np.prod(slices, axis=0), np.prod(layers, axis=0))
    return per_slice, product, flat

"""The detector's noise model, estimated from the frames of a scan, and the loss it calls for.

A pixel reads ``x = g n + e`` (frame units, "counts"): ``n`` Poisson photons, ``g`` counts per
photon and ``e`` Gaussian read noise of sigma ``s``, possibly clipped at zero by the detector or a
background subtraction. What one scan can and cannot tell:

- **Read noise** ``s``: yes, from the pixels without signal. After dark subtraction they are
  ``N(0, s²)``, so their negative half is a half-normal of scale ``s``; pixels with a little
  signal also reach below zero, but closer to it, so only negatives beyond one first-guess sigma
  are fitted (a truncated half-normal): within 3 % of the truth from 50 to 1e5 photons peak,
  where the plain rms of the negatives was 5 % low at 1e5. Clipped data show the read noise as
  excess zeros: a dark pixel is zero or positive with equal odds, its positives that
  half-normal; so the pixels at zero in many frames are fitted as a censored Gaussian (their
  fraction at zero and the median of their positives): within 2 % up to 500 photons peak, but
  up to 12 % high at 1e5 for read noise >= 10 counts and 45 % high for 2 counts (a dark pixel
  of a bright scan still catches photons, which clipping makes look like noise).
- **Counts per photon** ``g``: only when the values are quantised, i.e. multiples of one step
  with no read noise (photon-counting detectors, or any integer-photon data times a gain); then
  ``g`` is the step. Otherwise it is not identifiable from one scan: the variance-against-mean
  relation ``var = g mean + s²`` needs repeated measurements of one expected intensity, and a
  ptychography scan has none. Across frames a pixel's intensity changes with the position
  (measured: its variance over 80 frames of a simulated scan is ``~3.5 mean²`` above the shot
  noise), in one frame speckle varies from pixel to pixel, and the frame's spectrum has no
  signal-free band to read a noise floor from (the probe fills the window). So ``g`` is then
  taken as 1 and flagged as assumed; a profile that knows it should fix it.

The loss needs only the read noise in photons (``s / g``) and whether the counts are Poisson,
which is why an assumed ``g`` still gives the right kind of loss (:func:`recommend_loss`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ptystream.config import LossKind

__all__ = [
    "NoiseEstimate",
    "NoiseModel",
    "estimate_noise",
    "noise_model",
    "recommend_loss",
    "to_photons",
]

NoiseKind = Literal["poisson", "gaussian", "poisson+gaussian"]

logger = logging.getLogger(__name__)

#: Read noise (photons) below which the counts are taken as Poisson: its variance is under a
#: tenth of the 3/8 the Anscombe offset already holds.
NEGLIGIBLE_READ_NOISE_PHOTONS = 0.2
#: Pixel values read at most, from frames spread evenly over the scan (bounds time and memory).
MAX_VALUES = 4_000_000
#: Fewest values a fit is made from; below it the simpler estimate is kept.
MIN_VALUES = 30
#: Fraction of exact zeros (with no negatives) from which data are taken as clipped at zero.
CLIPPED_ZERO_FRACTION = 0.01
#: Fraction of a pixel's frames at zero from which, in clipped data, it is taken as dark (a dark
#: pixel is zero in half of them).
DARK_ZERO_FRACTION = 0.4
#: Relative tolerance for a value to be a whole multiple of the quantisation step.
QUANTUM_TOLERANCE = 1e-3
#: Half-normal fraction within 0.1 sigma of zero: the positives a clipped Gaussian puts there.
_NEAR_ZERO = math.erf(0.1 / math.sqrt(2))


@dataclass(frozen=True)
class NoiseEstimate:
    """The noise model of a scan's frames (:func:`estimate_noise`).

    Attributes
    ----------
    read_noise_counts : Gaussian read-noise sigma in the frames' units (counts).
    counts_per_photon : frame units per detected photon (the detector's gain, ADU per photon).
    gain_measured : True when ``counts_per_photon`` was read from quantised values; False when
        it is assumed to be 1 (not identifiable from these frames).
    clipped : True when negative values were set to zero before the frames reached us (the read
        noise then shows as excess zeros and was estimated from them).
    negative_fraction : fraction of the valid values below zero.
    zero_fraction : fraction of the valid values exactly zero.
    n_values : number of pixel values the estimate is made from (valid pixels of the frames
        read).
    bright_photons : the 99th percentile of the values in photons: the shot noise the read noise
        is compared with.
    kind : ``"poisson"`` (read noise negligible), ``"gaussian"`` (read noise above the shot
        noise in 99 % of the values) or ``"poisson+gaussian"``.
    """

    read_noise_counts: float
    counts_per_photon: float
    gain_measured: bool
    clipped: bool
    negative_fraction: float
    zero_fraction: float
    n_values: int
    bright_photons: float
    kind: NoiseKind

    @property
    def read_noise_photons(self) -> float:
        """Read-noise sigma in photons: what sets the loss's variance offset."""
        return self.read_noise_counts / self.counts_per_photon

    @property
    def loss_offset_counts(self) -> float:
        """The amplitude loss's variance offset in the frames' own units, ``3g/8 + s²/g``.

        The generalised Anscombe transform of ``x = g n + e`` is ``sqrt(x/g + 3/8 + (s/g)²)``,
        proportional to ``sqrt(x + 3g/8 + s²/g)``; for ``g = 1`` this is the engine's
        ``0.375 + read_noise_counts**2``.
        """
        g = self.counts_per_photon
        return 0.375 * g + self.read_noise_counts**2 / g

    def summary(self) -> str:
        """One line for a log or a report, e.g. ``read noise 10.1 counts; 1 count/photon
        (assumed); poisson+gaussian``."""
        gain = f"{self.counts_per_photon:.3g} counts/photon"
        gain += " (measured)" if self.gain_measured else " (assumed)"
        clipped = ", clipped at 0" if self.clipped else ""
        return f"read noise {self.read_noise_counts:.3g} counts{clipped}; {gain}; {self.kind}"

    def to_metadata(self) -> dict[str, float | int | bool | str]:
        """Every field as plain JSON types, for the run's metadata."""
        return {
            "read_noise_counts": float(self.read_noise_counts),
            "counts_per_photon": float(self.counts_per_photon),
            "gain_measured": bool(self.gain_measured),
            "clipped": bool(self.clipped),
            "negative_fraction": float(self.negative_fraction),
            "zero_fraction": float(self.zero_fraction),
            "n_values": int(self.n_values),
            "bright_photons": float(self.bright_photons),
            "kind": str(self.kind),
        }


def estimate_noise(frames: np.ndarray, mask: np.ndarray | None = None) -> NoiseEstimate:
    """Read noise and counts per photon of ``frames``, from the frames alone.

    Parameters
    ----------
    frames : ``(k, N, N)`` real frames in counts, free of NaN; may be background-subtracted
        (negative values), clipped at zero, integer photon counts or scaled by a gain. At most
        :data:`MAX_VALUES` values are read, from frames spread evenly over the scan.
    mask : ``(N, N)`` (or ``(k, N, N)``) booleans, True where a pixel is valid; None: all.

    Returns
    -------
    NoiseEstimate
        The read noise from the negatives (or, clipped, from the pixels at zero in many
        frames), the gain from the values' quantisation (else 1, flagged assumed) and the
        kind of noise; see the module's docstring for why each and what is not identifiable.

    Raises
    ------
    ValueError
        ``frames`` not 3-D or empty, or ``mask`` of another shape, or no valid pixel.
    """
    frames = np.asarray(frames)
    if frames.ndim != 3 or 0 in frames.shape:
        raise ValueError(f"frames must be (k, N, N) and not empty, got shape {frames.shape}")
    if mask is None:
        mask = np.ones(frames.shape[1:], bool)
    mask = np.asarray(mask, bool)
    if mask.shape not in (frames.shape[1:], frames.shape):
        raise ValueError(
            f"mask must be {frames.shape[1:]} or {frames.shape} like the frames, got {mask.shape}"
        )
    per_frame = max(int(mask.sum()) // (1 if mask.ndim == 2 else frames.shape[0]), 1)
    read = np.unique(np.linspace(0, frames.shape[0] - 1, max(1, MAX_VALUES // per_frame)).round())
    picked = frames[read.astype(int)]
    valid = np.broadcast_to(mask, frames.shape)[read.astype(int)]
    values = picked[valid].astype(np.float64)
    if not values.size:
        raise ValueError("the mask leaves no valid pixel")

    negatives = -values[values < 0]
    zeros = int(np.count_nonzero(values == 0))
    positives = np.sort(values[values > 0])
    quantum = _quantum(positives)
    sigma = _half_normal_sigma(negatives) if negatives.size else 0.0
    clipped = False
    if quantum is not None and sigma < NEGLIGIBLE_READ_NOISE_PHOTONS * quantum:
        gain, measured = quantum, True
    else:
        gain, measured = 1.0, False
        if not negatives.size and quantum is None and zeros >= CLIPPED_ZERO_FRACTION * values.size:
            sigma = _sigma_from_zeros(picked, valid, positives, zeros)
            clipped = sigma > 0
    bright = float(np.percentile(values, 99)) / gain
    return NoiseEstimate(
        read_noise_counts=float(sigma),
        counts_per_photon=float(gain),
        gain_measured=measured,
        clipped=clipped,
        negative_fraction=negatives.size / values.size,
        zero_fraction=zeros / values.size,
        n_values=int(values.size),
        bright_photons=max(bright, 0.0),
        kind=_kind(sigma / gain, bright),
    )


def recommend_loss(estimate: NoiseEstimate) -> LossKind:
    """The engine's loss for data of this noise model.

    ``poisson`` (the likelihood of photon counts) only for counts that are Poisson and were
    measured to be: quantised photons, no negative value, no clipping, negligible read noise.
    Everything else gets ``amplitude``, the generalised Anscombe misfit with the offset ``3/8 +
    (s/g)²`` (:attr:`NoiseEstimate.loss_offset_counts`): where the read noise dominates it
    becomes least squares weighted by ``1 / (I + c)``, the Gaussian likelihood, and where shot
    noise dominates the Anscombe one, so it is right for both and between. ``intensity`` is
    never chosen: unweighted, it is right only where read noise dominates even the brightest
    pixels, and it needs smaller rates. A Poisson loss on data with negative counts would clip
    them (biasing dark pixels up), hence never.
    """
    if (
        estimate.kind == "poisson"
        and estimate.gain_measured
        and not estimate.clipped
        and estimate.negative_fraction == 0
    ):
        return LossKind.POISSON
    return LossKind.AMPLITUDE


@dataclass(frozen=True)
class NoiseModel:
    """The noise model an engine uses for one scan (:func:`noise_model`).

    Attributes
    ----------
    estimate : what the first frames show.
    read_noise_counts : the read-noise sigma used, in counts: the profile's when it fixes one,
        else the estimate's.
    read_noise_source : ``"profile"`` or ``"estimated"``.
    loss : the loss used: the profile's, or for ``auto`` :func:`recommend_loss`'s.
    warnings : what may make the result wrong (a Poisson loss on data with negative counts, a
        profile's read noise far from the data's), also logged.
    """

    estimate: NoiseEstimate
    read_noise_counts: float
    read_noise_source: Literal["profile", "estimated"]
    loss: LossKind
    warnings: tuple[str, ...] = ()

    @property
    def offset_counts(self) -> float:
        """The amplitude loss's variance offset in counts, ``3g/8 + s²/g``, with the read noise
        used and the estimate's counts per photon."""
        g = self.estimate.counts_per_photon
        return 0.375 * g + self.read_noise_counts**2 / g

    @classmethod
    def from_metadata(cls, meta: dict) -> NoiseModel:
        """The model :meth:`to_metadata` wrote (a checkpoint's)."""
        return cls(
            NoiseEstimate(**meta["estimated"]),
            meta["read_noise_counts"],
            meta["read_noise_source"],
            LossKind(meta["loss"]),
            tuple(meta["warnings"]),
        )

    def to_metadata(self) -> dict[str, object]:
        """Plain JSON types for the run's metadata: the estimate, what was used, the warnings."""
        return {
            "estimated": self.estimate.to_metadata(),
            "read_noise_counts": float(self.read_noise_counts),
            "read_noise_source": self.read_noise_source,
            "loss": str(self.loss),
            "warnings": list(self.warnings),
        }


def noise_model(
    frames: np.ndarray,
    mask: np.ndarray | None,
    *,
    read_noise_counts: float | None,
    loss: LossKind | str,
) -> NoiseModel:
    """The noise model for a scan from its first ``frames``: the read noise fixed by the profile
    (``read_noise_counts``) or estimated, and ``loss`` resolved (``auto``: the one the data's
    statistics call for). Logs the estimate, and a warning for each detectable risk.
    """
    est = estimate_noise(frames, mask)
    loss = LossKind(loss)
    used = est.read_noise_counts if read_noise_counts is None else float(read_noise_counts)
    warnings = []
    if loss is LossKind.AUTO:
        loss = recommend_loss(est)
    elif loss is LossKind.POISSON and recommend_loss(est) is not LossKind.POISSON:
        reason = (
            f"{est.negative_fraction:.1%} of the values are negative"
            if est.negative_fraction > 0
            else f"they show read noise of {est.read_noise_counts:.3g} counts"
            + (" (clipped at 0)" if est.clipped else "")
        )
        warnings.append(
            f"engine.loss is poisson, but the frames are not photon counts: {reason}; the "
            "Poisson loss clips them and biases the fit; use loss: auto or amplitude"
        )
    if read_noise_counts is not None and _far_apart(read_noise_counts, est.read_noise_counts):
        warnings.append(
            f"instrument.read_noise_counts is {read_noise_counts:g}, but the frames show "
            f"{est.read_noise_counts:.3g} counts; leave it out to use the estimate"
        )
    model = NoiseModel(
        est, used, "estimated" if read_noise_counts is None else "profile", loss, tuple(warnings)
    )
    logger.info(
        "noise model: %s; read noise used %.3g counts (%s); loss %s",
        est.summary(),
        used,
        model.read_noise_source,
        loss,
    )
    for warning in warnings:
        logger.warning(warning)
    return model


def _far_apart(given: float, estimated: float) -> bool:
    """True when a profile's read noise and the estimate differ by more than a factor of 2 and
    by more than one count (noise levels under a count hardly change the loss)."""
    low, high = sorted((given, estimated))
    return high - low > 1.0 and high > 2.0 * low


def to_photons(frames: np.ndarray, estimate: NoiseEstimate) -> np.ndarray:
    """``frames`` in photons (divided by the counts per photon), for the Poisson loss and for a
    read noise given in photons (:attr:`NoiseEstimate.read_noise_photons`).

    With ``g`` assumed (1) this returns the frames unchanged in value; the amplitude loss can
    instead keep the frames in counts with the offset :attr:`NoiseEstimate.loss_offset_counts`.
    """
    return np.asarray(frames) / estimate.counts_per_photon


def _half_normal_sigma(magnitudes: np.ndarray) -> float:
    """Sigma of the half-normal that ``magnitudes`` (> 0) are the tail of, fitted beyond a first
    guess (their rms) so that values pulled towards zero by a little signal do not count.

    Maximum likelihood for a half-normal truncated at ``t``: ``mean(x²) = s² (1 + a phi(a) /
    Q(a))`` with ``a = t / s``, solved by fixed-point iteration (it converges in a few steps).
    """
    rms = float(np.sqrt(np.mean(magnitudes**2)))
    tail = magnitudes[magnitudes > rms]
    if tail.size < MIN_VALUES:
        return rms
    second_moment = float(np.mean(tail**2))
    sigma = rms
    for _ in range(100):
        a = rms / sigma
        ratio = math.exp(-a * a / 2) / math.sqrt(2 * math.pi) / (0.5 * math.erfc(a / math.sqrt(2)))
        updated = math.sqrt(second_moment / (1 + a * ratio))
        if abs(updated - sigma) < 1e-9 * sigma:
            break
        sigma = updated
    return sigma


def _sigma_from_zeros(
    frames: np.ndarray, valid: np.ndarray, positives: np.ndarray, zeros: int
) -> float:
    """Sigma of a read noise clipped at zero, from the pixels that are dark across ``frames``.

    A dark pixel reads zero or positive with equal odds, its positives a half-normal of the read
    noise. So the pixels zero in at least :data:`DARK_ZERO_FRACTION` of their valid frames are
    taken as a censored ``N(mu, s²)``: their fraction ``p`` at zero gives ``mu / s = -q(p)``
    (``q`` the normal quantile) and the median of their positives ``mu + s q((1 + p) / 2)``,
    which is robust to their odd photon. Too few such values: the ``zeros // 2``-th smallest of
    all ``positives`` (sorted) as the half-normal's median, ``0.6745 s``. Zero when the
    positives start with a gap (values but no noise near zero, as in photon counts scaled by a
    flat field): then the zeros are no clipped noise.
    """
    n_valid = valid.sum(axis=0)
    zero_fraction = ((frames == 0) & valid).sum(axis=0) / np.maximum(n_valid, 1)
    dark = (zero_fraction >= DARK_ZERO_FRACTION) & (n_valid > 0)
    dark_values = frames[:, dark][valid[:, dark]].astype(np.float64)
    dark_positives = dark_values[dark_values > 0]
    if dark_positives.size >= MIN_VALUES:
        at_zero = 1 - dark_positives.size / dark_values.size
        shift = -_normal_quantile(at_zero)
        sigma = float(np.median(dark_positives)) / (_normal_quantile((1 + at_zero) / 2) + shift)
    elif min(zeros // 2, positives.size - 1) >= MIN_VALUES:
        sigma = float(positives[zeros // 2]) / 0.6745
    else:
        return 0.0
    near_zero = int(np.searchsorted(positives, 0.1 * sigma))
    if near_zero < 0.25 * _NEAR_ZERO * zeros:
        return 0.0
    return sigma


def _normal_quantile(p: float) -> float:
    """The standard normal's quantile at ``p`` in (0, 1), by bisection on ``erf`` (no scipy)."""
    lo, hi = -10.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 0.5 * math.erfc(-mid / math.sqrt(2)) < p else (lo, mid)
    return (lo + hi) / 2


def _quantum(positives: np.ndarray) -> float | None:
    """The step all values are whole multiples of (the smallest positive value), or None when
    they are not quantised (or there is no positive value)."""
    if not positives.size:
        return None
    step = float(positives[0])
    multiples = positives / step
    tolerance = QUANTUM_TOLERANCE + 4 * np.finfo(np.float32).eps * multiples
    if np.all(np.abs(multiples - np.round(multiples)) <= tolerance):
        return step
    return None


def _kind(read_noise_photons: float, bright_photons: float) -> NoiseKind:
    """Poisson when the read noise is negligible, Gaussian when its variance exceeds the shot
    noise of all but the brightest 1 % of values, both otherwise."""
    if read_noise_photons < NEGLIGIBLE_READ_NOISE_PHOTONS:
        return "poisson"
    if read_noise_photons**2 >= bright_photons:
        return "gaussian"
    return "poisson+gaussian"

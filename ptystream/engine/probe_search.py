"""Choosing the initial probe's defocus from the data (far field; numpy only).

The initial probe is the measured mean pattern's modulus times a defocus phase
(:func:`ptystream.optics.initial_probe_from_patterns`). A nominal defocus 50 % off, or of the
wrong sign, starts the reconstruction in a basin it does not leave, so the defocus is chosen by
how well each candidate probe *predicts frames it was not fitted to*:

1. The ``TRIAL_FRAMES`` frames nearest the middle of the first frames' positions are taken;
   every ``HELD_OUT_EVERY``-th of them by distance from the middle (the most central first) is
   held out.
2. For each candidate defocus the probe is held fixed and a flat object is fitted to the other
   frames by ``TRIAL_PASSES`` passes of rPIE (object step 1, alpha ``OBJECT_ALPHA``) whose
   modulus constraint is the amplitude loss's with the noise offset ``c``: the far field
   ``F`` becomes ``F sqrt(I + c) / sqrt(|F|^2 + c)``, so that pixels the read noise swamps
   hardly move the object. (With the plain ``sqrt(max(I, 0))``, at 50 counts peak and read
   noise 20 the trials fitted noise and focus, 0 mm, won; with the offset the truth did.)
3. The score is the amplitude misfit (the AD engine's, with the noise model's variance offset)
   of the held-out frames predicted from that object, over the bright pixels (where the mean
   pattern exceeds ``BRIGHT_FRACTION`` of its maximum; elsewhere read noise is the same for
   every candidate and adds only scatter).

Why held out: the misfit of the fitted frames themselves has false minima near focus, where
the small probe leaves neighbouring frames without overlap and the object fits each alone
(measured on the 128² test scan: 0.5 mm scored within 16 % of the truth's 1.5 mm). A held-out
frame is predicted only through the overlap, and only the right probe makes its neighbours'
object consistent with it: that score had one basin, at the truth, with the wrong sign at 3-4
times its value. The sign is identifiable only this way: with a flat object the data cannot
tell a defocus from its opposite (the probes are conjugate).

The candidates form a grid over ``[-R, R]``, refined by a bounded Brent search
(:func:`ptystream.engine.distance.grid_then_brent`). A beam of convergence semi-angle ``a``
(the bright-field disc's radius ``f_c`` in the mean pattern, holding 90 % of its power, times
the wavelength) is ``2 a |z|`` wide at a defocus ``z``; it must fit in the ``N dx`` window (a
wider one wraps around in the model), so ``|z| <= N dx / (2 a)``. ``R`` is that bound, or twice
the nominal defocus if larger. The grid's step is ``1 / (lambda f_c^2)``, the defocus that
changes the phase at the disc's edge by pi: the grid point nearest the truth is then off by
at most pi/2 there, inside the score's basin (about 2 pi wide on the test scan). So the grid
has about ``N dx f_c`` points (the disc's radius in detector pixels; 17 on the test scan),
clipped to ``[MIN_POINTS, MAX_POINTS]``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from ptystream import optics
from ptystream.config import EngineSettings
from ptystream.engine.distance import grid_then_brent
from ptystream.types import NEAR_FIELD, Geometry

__all__ = ["DefocusSearch", "defocus_range_m", "initial_defocus", "search_defocus"]

logger = logging.getLogger(__name__)

#: Frames a trial uses (the nearest to the middle of the first frames).
TRIAL_FRAMES = 20
#: Every this many of them (by distance from the middle) is held out to score the trial.
HELD_OUT_EVERY = 4
#: Fewer first frames than this: no search (no overlap to judge a probe by).
MIN_FRAMES = 8
#: rPIE passes over the fitted frames per trial.
TRIAL_PASSES = 4
#: rPIE's alpha of the object update (1: ePIE).
OBJECT_ALPHA = 0.5
#: Pixels scored: where the mean pattern exceeds this fraction of its maximum.
BRIGHT_FRACTION = 0.01
#: Bounds on the grid's points, and Brent evaluations after it.
MIN_POINTS, MAX_POINTS = 9, 41
REFINE_EVALUATIONS = 6
#: Floor under predicted moduli (normalised units), as in the engines.
_FLOOR = 1e-12


@dataclass(frozen=True)
class DefocusSearch:
    """The outcome of :func:`search_defocus`.

    Attributes
    ----------
    defocus_m : the chosen defocus, metres (positive: the sample downstream of the focus).
    trials : ``{defocus_m: score}`` of every candidate (held-out amplitude misfit, normalised
        units; lower is better).
    seconds : wall time the search took.
    """

    defocus_m: float
    trials: dict[float, float]
    seconds: float


def initial_defocus(
    patterns: np.ndarray,
    positions_m: np.ndarray,
    mean_pattern: np.ndarray,
    geometry: Geometry,
    settings: EngineSettings,
    *,
    nominal_m: float,
    scale: float,
    valid: np.ndarray,
    offset: float,
    given: bool,
) -> float | None:
    """The defocus (metres) an engine builds its initial probe with, from its first frames.

    ``patterns`` are those frames in counts (far field: centred), ``scale`` the engine's
    normalisation (``mean_pattern``, ``offset`` and the search are in counts over it). The
    search (:func:`search_defocus`) runs when ``settings.probe_defocus_search`` is on and there
    are :data:`MIN_FRAMES` frames (else ``nominal_m`` is used, with a log line saying why).
    Not for a multislice object (``settings.slices`` > 1): the thin-object trials find a plane
    inside the sample, not the entrance of its first slice where the probe is (measured: 2.06
    mm for 1.5 mm, two layers 0.6 mm apart), so ``nominal_m`` is used. None where the probe is
    not built from a defocus: near field, or a ``given`` probe.
    """
    if given or geometry.propagation == NEAR_FIELD:
        return None
    if not settings.probe_defocus_search or settings.slices > 1:
        return nominal_m
    if len(patterns) < MIN_FRAMES:
        logger.warning(
            "probe defocus: %d first frames are too few to search (%d needed); nominal %.4g m",
            len(patterns),
            MIN_FRAMES,
            nominal_m,
        )
        return nominal_m
    nearest = _nearest(positions_m)
    return search_defocus(
        patterns[nearest] / scale,
        positions_m[nearest],
        mean_pattern,
        geometry,
        nominal_m=nominal_m,
        valid=valid,
        offset=offset,
        range_m=settings.probe_defocus_search_m,
    ).defocus_m


def defocus_range_m(mean_pattern: np.ndarray, geometry: Geometry, nominal_m: float) -> float:
    """``R``, the largest ``|defocus|`` searched, metres: ``N dx / (2 a)`` (the beam of
    convergence semi-angle ``a`` fills the window), or ``2 |nominal_m|`` if larger.

    ``a`` is the wavelength times the radius (1/m) of the disc about the centroid holding
    90 % of the centred ``mean_pattern``'s power."""
    window_m = geometry.frame_px * geometry.object_pixel_size_m
    semi_angle = geometry.wavelength_m * _disc_radius(mean_pattern, geometry)
    return max(window_m / (2.0 * semi_angle), 2.0 * abs(nominal_m))


def search_defocus(
    frames: np.ndarray,
    positions_m: np.ndarray,
    mean_pattern: np.ndarray,
    geometry: Geometry,
    *,
    nominal_m: float = 0.0,
    valid: np.ndarray | None = None,
    offset: float = 0.0,
    range_m: tuple[float, float] | None = None,
) -> DefocusSearch:
    """The defocus (metres) whose initial probe best predicts held-out frames (see the
    module's notes).

    Parameters
    ----------
    frames : ``(k, N, N)`` centred far-field patterns, in the units of ``mean_pattern``
        (an engine's: counts over its normalisation); ``k >= MIN_FRAMES``.
    positions_m : ``(k, 2)`` probe positions ``(y, x)``, metres.
    mean_pattern : ``(N, N)`` the first frames' mean, masked pixels filled.
    geometry : far field or Fresnel (the candidates are the probe times the Fresnel phase,
        which is what the patterns see).
    nominal_m : the profile's defocus, metres; the range covers twice it.
    valid : ``(N, N)`` True where a pixel was measured; None: all.
    offset : the amplitude loss's variance offset, in the frames' units.
    range_m : ``(min, max)`` defocus searched, metres; None: ``[-R, R]``
        (:func:`defocus_range_m`).

    Raises
    ------
    ValueError
        For a near-field geometry, too few frames, or an empty range.
    """
    if geometry.propagation == NEAR_FIELD:
        raise ValueError("a defocus search needs a far-field geometry")
    if len(frames) < MIN_FRAMES:
        raise ValueError(f"a defocus search needs {MIN_FRAMES} frames, got {len(frames)}")
    radius = _disc_radius(mean_pattern, geometry)
    if range_m is None:
        reach = defocus_range_m(mean_pattern, geometry, nominal_m)
        range_m = (-reach, reach)
    lo, hi = range_m
    if not lo < hi:
        raise ValueError(f"defocus search range {range_m} m is empty")
    step = 1.0 / (geometry.wavelength_m * radius**2)
    points = int(np.clip(np.ceil((hi - lo) / step) + 1, MIN_POINTS, MAX_POINTS))
    trial = _Trial(frames, positions_m, mean_pattern, geometry, valid, offset)
    trials: dict[float, float] = {}

    def score(defocus_m: float) -> float:
        trials[float(defocus_m)] = value = trial.score(defocus_m)
        return value

    start = time.perf_counter()
    grid_then_brent(score, np.linspace(lo, hi, points), REFINE_EVALUATIONS)
    best = min(trials, key=trials.__getitem__)
    seconds = time.perf_counter() - start
    logger.info(
        "probe defocus %.4g m (nominal %.4g m; %d trials in [%.3g, %.3g] m, %.1f s)",
        best,
        nominal_m,
        len(trials),
        lo,
        hi,
        seconds,
    )
    return DefocusSearch(best, trials, seconds)


class _Trial:
    """The held-out score of a candidate defocus, on a fixed set of frames."""

    def __init__(
        self,
        frames: np.ndarray,
        positions_m: np.ndarray,
        mean_pattern: np.ndarray,
        geometry: Geometry,
        valid: np.ndarray | None,
        offset: float,
    ):
        n, dx = geometry.frame_px, geometry.object_pixel_size_m
        nearest = _nearest(positions_m)
        held = np.arange(len(nearest)) % HELD_OUT_EVERY == 0
        corners = np.round((positions_m[nearest] - positions_m[nearest].min(axis=0)) / dx)
        self._corners = corners.astype(int)
        self._canvas = tuple(self._corners.max(axis=0) + n)
        intensity = np.fft.ifftshift(frames[nearest], axes=(-2, -1))  # zero frequency at [0, 0]
        self._amplitude = np.sqrt(np.maximum(intensity, 0.0)).astype(np.float32)
        self._loss_amplitude = np.sqrt(np.maximum(intensity + offset, 0.0))
        self._fitted, self._held = np.flatnonzero(~held), np.flatnonzero(held)
        valid = np.ones((n, n), bool) if valid is None else np.asarray(valid, bool)
        self._valid = np.fft.ifftshift(valid)
        scored = valid & (mean_pattern > BRIGHT_FRACTION * mean_pattern.max())
        self._scored = np.fft.ifftshift(scored)
        self._offset = offset
        self._mean = mean_pattern
        self._geometry = geometry

    def score(self, defocus_m: float) -> float:
        """Held-out misfit after fitting the object with the probe of ``defocus_m`` fixed."""
        g, n = self._geometry, self._geometry.frame_px
        probe = optics.initial_probe_from_patterns(
            self._mean, g.object_pixel_size_m, g.wavelength_m, defocus_m
        )
        power = probe.real**2 + probe.imag**2
        step = np.conj(probe) / ((1.0 - OBJECT_ALPHA) * power + OBJECT_ALPHA * power.max())
        obj = np.ones(self._canvas, np.complex64)
        rng = np.random.default_rng(0)  # the same order for every candidate
        for _ in range(TRIAL_PASSES):
            for j in rng.permutation(self._fitted):
                r, c = self._corners[j]
                patch = obj[r : r + n, c : c + n]  # a view: updated in place
                wave = patch * probe
                field = np.fft.fft2(wave, norm="ortho")
                # the modulus moved as the amplitude loss with offset c asks: where the counts
                # are well above the read noise, to the measured modulus; where not, hardly
                predicted = np.sqrt(field.real**2 + field.imag**2 + self._offset)
                target = field * (self._loss_amplitude[j] / np.maximum(predicted, _FLOOR))
                target = np.where(self._valid, target, field)
                patch += step * (np.fft.ifft2(target, norm="ortho") - wave)
        misfit = []
        for j in self._held:
            r, c = self._corners[j]
            field = np.fft.fft2(obj[r : r + n, c : c + n] * probe, norm="ortho")
            predicted = np.sqrt(field.real**2 + field.imag**2 + self._offset)
            misfit.append(np.mean((predicted - self._loss_amplitude[j])[self._scored] ** 2))
        return float(np.mean(misfit))


def _disc_radius(mean_pattern: np.ndarray, geometry: Geometry) -> float:
    """Radius (1/m) of the disc about the centroid holding 90 % of the centred mean pattern's
    power: the bright-field disc of a focused beam."""
    frequency_px = 1.0 / (geometry.frame_px * geometry.object_pixel_size_m)
    # not clipped at 0: read noise averages out of the sums, but its positive part would not
    power = np.asarray(mean_pattern, np.float64)
    total = power.sum()
    yy, xx = np.indices(power.shape)
    r = np.hypot(yy - (power * yy).sum() / total, xx - (power * xx).sum() / total).ravel()
    order = np.argsort(r, kind="stable")
    enclosed = np.cumsum(power.ravel()[order]) / total
    return float(r[order][min(np.searchsorted(enclosed, 0.9), r.size - 1)]) * frequency_px


def _nearest(positions_m: np.ndarray) -> np.ndarray:
    """Indices of the :data:`TRIAL_FRAMES` positions nearest their median, nearest first."""
    distance = np.hypot(*(positions_m - np.median(positions_m, axis=0)).T)
    return np.argsort(distance, kind="stable")[:TRIAL_FRAMES]

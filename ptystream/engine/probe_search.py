"""Choosing the initial probe's defocus from the data (far field; numpy only).

The initial probe is the measured mean pattern's modulus times a defocus phase
(:func:`ptystream.optics.initial_probe_from_patterns`). A nominal defocus 50 % off, or of the
wrong sign, starts the reconstruction in a basin it does not leave, so the defocus is chosen by
how well each candidate probe *predicts frames it was not fitted to*:

Each candidate probe is scored by :class:`~ptystream.engine.trial.HeldOutTrial`: a flat
object fitted by a few rPIE passes to the frames nearest the middle of the scan with the probe
held fixed, and the misfit of the frames held out of that fit. Its modulus constraint is the
amplitude loss's with the noise offset (with the plain ``sqrt(max(I, 0))``, at 50 counts peak
and read noise 20 the trials fitted noise and focus, 0 mm, won; with the offset the truth did).

Why held out: the misfit of the fitted frames themselves has false minima near focus, where
the small probe leaves neighbouring frames without overlap and the object fits each alone
(measured on the 128² test scan: 0.5 mm scored within 16 % of the truth's 1.5 mm). A held-out
frame is predicted only through the overlap, and only the right probe makes its neighbours'
object consistent with it: that score had one basin, at the truth, with the wrong sign at 3-4
times its value. The sign is identifiable only this way: with a flat object the data cannot
tell a defocus from its opposite (the probes are conjugate).

**When the data cannot choose.** A trial says something only where its fitted object predicts
the held-out frames better than a flat object does (the same misfit for every candidate: each
one's far field is the mean pattern's modulus). Where the best trial does not beat the flat
object by :data:`INFORMATIVE_FRACTION`, the search has found nothing and the nominal defocus is
kept (:attr:`DefocusSearch.informative`; the engine says so). Measured (best trial over the flat
object's misfit): 0.20-0.74 on the robustness grid's far-field scans of ``paper_object`` (500
to 1e5 counts peak, read noise 0-20), 0.99 at 50 counts peak, and 1.000 on a simulated Siemens
star (``benchmarks/star_frc.py``: the 20 central frames hold the star's centre, sparse and weak
in contrast; the trials, truth's included, only add noise to a flat object, and the search's
minimum was a focused probe, 0 mm for 1.5 mm, which failed the reconstruction: |C| 0.70). The
nominal defocus is itself a candidate, so a nominal the grid misses is kept where it predicts
best.

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

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np

from ptystream import optics
from ptystream.config import EngineSettings
from ptystream.engine.distance import grid_then_brent
from ptystream.engine.trial import HeldOutTrial, nearest
from ptystream.types import NEAR_FIELD, Geometry

__all__ = [
    "DefocusSearch",
    "defocus_range_m",
    "first_frames_search",
    "nominal_defocus",
    "search_defocus",
]

logger = logging.getLogger(__name__)

#: Fewer first frames than this: no search (no overlap to judge a probe by).
MIN_FRAMES = 8
#: Bounds on the grid's points, and Brent evaluations after it.
MIN_POINTS, MAX_POINTS = 9, 41
REFINE_EVALUATIONS = 6
#: The best trial's held-out misfit must be at most this fraction of the flat object's for the
#: search to choose (else the nominal defocus is kept).
INFORMATIVE_FRACTION = 0.95


@dataclass(frozen=True)
class DefocusSearch:
    """The outcome of :func:`search_defocus`.

    Attributes
    ----------
    defocus_m : the chosen defocus, metres (positive: the sample downstream of the focus): the
        best trial's, or the nominal one where the search is not :attr:`informative`.
    trials : ``{defocus_m: score}`` of every candidate (held-out amplitude misfit, normalised
        units; lower is better).
    flat : the held-out misfit of the flat object (no fit; normalised units, as ``trials``),
        the same for every candidate.
    seconds : wall time the search took.
    """

    defocus_m: float
    trials: dict[float, float]
    flat: float
    seconds: float

    @property
    def best_ratio(self) -> float:
        """The best trial's misfit over the flat object's (below 1: the trials learnt
        something from the data)."""
        return min(self.trials.values()) / self.flat if self.flat > 0 else float("inf")

    @property
    def informative(self) -> bool:
        """Whether the best trial beat the flat object by :data:`INFORMATIVE_FRACTION`, so that
        the data chose the defocus."""
        return self.best_ratio <= INFORMATIVE_FRACTION


def nominal_defocus(geometry: Geometry, nominal_m: float, *, given: bool) -> float | None:
    """The defocus (metres) a probe is built with where none is searched: ``nominal_m``, or
    None where the probe is not built from a defocus (near field, a ``given`` probe)."""
    return None if given or geometry.propagation == NEAR_FIELD else nominal_m


def first_frames_search(
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
) -> DefocusSearch | None:
    """The defocus search (:func:`search_defocus`) an engine runs on its first frames, or None
    where none runs (then :func:`nominal_defocus` applies).

    ``patterns`` are those frames in counts (far field: centred), ``scale`` the engine's
    normalisation (``mean_pattern``, ``offset`` and the search are in counts over it). The
    search runs when ``settings.probe_defocus_search`` is on, the probe is built from a
    defocus (far field, not ``given``) and there are :data:`MIN_FRAMES` frames (fewer: a log
    line says so). Not for a multislice object (``settings.slices`` > 1): the thin-object
    trials find a plane inside the sample, not the entrance of its first slice where the probe
    is (measured: 2.06 mm for 1.5 mm, two layers 0.6 mm apart).
    """
    if nominal_defocus(geometry, nominal_m, given=given) is None:
        return None
    if not settings.probe_defocus_search or settings.slices > 1:
        return None
    if len(patterns) < MIN_FRAMES:
        logger.warning(
            "probe defocus: %d first frames are too few to search (%d needed); nominal %.4g m",
            len(patterns),
            MIN_FRAMES,
            nominal_m,
        )
        return None
    chosen = nearest(positions_m)
    return search_defocus(
        patterns[chosen] / scale,
        positions_m[chosen],
        mean_pattern,
        geometry,
        nominal_m=nominal_m,
        valid=valid,
        offset=offset,
        range_m=settings.probe_defocus_search_m,
    )


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
    """The defocus (metres) whose initial probe best predicts held-out frames, or
    ``nominal_m`` where none predicts them :data:`INFORMATIVE_FRACTION` better than a flat
    object (see the module's notes).

    Parameters
    ----------
    frames : ``(k, N, N)`` centred far-field patterns, in the units of ``mean_pattern``
        (an engine's: counts over its normalisation); ``k >= MIN_FRAMES``.
    positions_m : ``(k, 2)`` probe positions ``(y, x)``, metres.
    mean_pattern : ``(N, N)`` the first frames' mean, masked pixels filled.
    geometry : far field or Fresnel (the candidates are the probe times the Fresnel phase,
        which is what the patterns see).
    nominal_m : the profile's defocus, metres: a candidate (inside the range), kept where the
        data cannot choose; the default range covers twice it.
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
    trial = HeldOutTrial(frames, positions_m, mean_pattern, geometry, valid, offset)
    trials: dict[float, float] = {}

    def score(defocus_m: float) -> float:
        trials[float(defocus_m)] = value = trial.score(
            _candidate(mean_pattern, geometry, defocus_m)
        )
        return value

    start = time.perf_counter()
    flat = trial.score(_candidate(mean_pattern, geometry, nominal_m), passes=0)
    if lo <= nominal_m <= hi:
        # a candidate, not a grid point: the grid's spacing, and so the bracket Brent refines,
        # stays that of the range (a nominal that wins is kept as given, not refined)
        score(nominal_m)
    grid_then_brent(score, np.linspace(lo, hi, points), REFINE_EVALUATIONS)
    best = min(trials, key=trials.__getitem__)
    found = DefocusSearch(best, trials, flat, time.perf_counter() - start)
    if not found.informative:
        found = dataclasses.replace(found, defocus_m=nominal_m)
    logger.info(
        "probe defocus %.4g m (nominal %.4g m; best trial %.4g m at %.3g of the flat object's "
        "misfit%s; %d trials in [%.3g, %.3g] m, %.1f s)",
        found.defocus_m,
        nominal_m,
        best,
        found.best_ratio,
        "" if found.informative else ", not informative: the nominal kept",
        len(trials),
        lo,
        hi,
        found.seconds,
    )
    return found


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


def _candidate(mean_pattern: np.ndarray, geometry: Geometry, defocus_m: float) -> np.ndarray:
    """The probe the patterns see for ``defocus_m`` (a Fresnel geometry's phase included)."""
    return optics.initial_probe_from_patterns(
        mean_pattern, geometry.object_pixel_size_m, geometry.wavelength_m, defocus_m
    )

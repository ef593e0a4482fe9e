"""Do the positions' axes agree with the frames? A check of the eight sign and swap choices
(numpy only).

A stage axis whose sign is flipped, or x and y swapped, relative to the detector's axes
reconstructs to noise with nothing to say it is wrong. Before the passes, each of the eight
signed permutations ``C`` of the positions (swap or not, each sign or not) is tried with the
engine's initial probe held fixed (:class:`~ptystream.engine.trial.HeldOutTrial`: a flat object
fitted to the frames nearest the middle of the scan, scored on the frames held out of the fit).
Only positions that agree with the data make a held-out frame's neighbours predict it. The
profile's rotation, if any, is kept: a candidate acts before it (``p' = R C R^-1 p``).

The score is judged against the noise: a held-out frame predicted perfectly still misfits by
the noise's variance (``floor``: a quarter of the counts per photon, in the engine's units,
for the variance-stabilised amplitude). One choice is *clearly better* than another when its
excess over the floor is at most :data:`RATIO` times the other's and the gap is at least
:data:`MIN_GAP` floors (the scatter of a mean over thousands of pixels is about a hundredth of
a floor). Measured on simulated 128² far-field scans: 0.2-0.3 of the next choice's excess at
500 counts peak, 0.15 at 1e5; at 50 counts with read noise 20 the scores lie within 1e-3 floors
of each other, and the check says it cannot tell.

**The twin image.** In the far field (and Fresnel, where the probe absorbs the quadratic
phase), the object ``conj(O(-r))`` with the probe ``conj(P(-r))`` gives the same intensities as
``O`` with ``P``: flipping both position signs is the twin image, which no intensity can tell
apart. So there the candidates form four classes of two, and a flip of both signs is never
suggested. First the probe chosen (by the defocus search) for the positions as given is held
fixed, each class scored by the better of its two members; when that confirms the positions
(the usual case, for the cost of eight trials), it stands. Otherwise each class is scored by a
defocus search of its own (the twin's probe is the one of opposite defocus, so the search over
both signs covers it), so that a wrong orientation's poorly chosen probe cannot hide the right
one (with the probe chosen for wrong positions, a swapped and flipped raster scored within 6 %
of the truth: undecided). With a given probe the first stage is all. Near field has no twin
(propagation over a known distance is not symmetric) and the probe is fixed: eight trials.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ptystream.engine.trial import HeldOutTrial, nearest
from ptystream.types import NEAR_FIELD, Geometry

__all__ = [
    "ORIENTATIONS",
    "Orientation",
    "OrientationCheck",
    "OrientationSetup",
    "can_judge",
    "candidates",
    "check_orientation",
    "trial_scorer",
]

logger = logging.getLogger(__name__)

#: A choice is clearly better when its excess misfit is at most this fraction of the other's...
RATIO = 0.5
#: ... and the gap is at least this many noise floors.
MIN_GAP = 0.05
#: Fewer trial positions than this, or a line of them: the check cannot judge.
MIN_FRAMES = 8

Mode = Literal["check", "auto", "off"]


@dataclass(frozen=True)
class Orientation:
    """A signed permutation of positions ``(y, x)``: swap the axes (or not), then multiply
    ``y`` by ``y_sign`` and ``x`` by ``x_sign``, as ``instrument.swap_axes``, ``y_sign`` and
    ``x_sign`` act on stage readbacks."""

    swap: bool = False
    y_sign: int = 1
    x_sign: int = 1

    @property
    def matrix(self) -> np.ndarray:
        """``(2, 2)`` acting on column vectors ``(y, x)``."""
        perm = np.array([[0.0, 1.0], [1.0, 0.0]]) if self.swap else np.eye(2)
        return np.diag([float(self.y_sign), float(self.x_sign)]) @ perm

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> Orientation:
        """The orientation whose :attr:`matrix` is ``matrix`` (a signed permutation)."""
        m = np.rint(matrix).astype(int)
        if m[0, 1] == 0:
            return cls(False, int(m[0, 0]), int(m[1, 1]))
        return cls(True, int(m[0, 1]), int(m[1, 0]))

    @property
    def twin(self) -> Orientation:
        """Both signs flipped: the far-field twin of this choice."""
        return Orientation(self.swap, -self.y_sign, -self.x_sign)

    @property
    def is_identity(self) -> bool:
        return self == Orientation()

    def then(self, later: Orientation) -> Orientation:
        """This orientation followed by ``later``."""
        return Orientation.from_matrix(later.matrix @ self.matrix)

    def transform(self, rotation_deg: float = 0.0) -> np.ndarray:
        """``(2, 2)`` ``R C R^-1`` for positions already rotated by ``rotation_deg``
        (``instrument.rotation_deg``): this choice acting before the rotation."""
        theta = math.radians(rotation_deg)
        c, s = math.cos(theta), math.sin(theta)
        rotation = np.array([[c, s], [-s, c]])  # (y, x) as InstrumentSettings.positions_m turns
        return rotation @ self.matrix @ rotation.T

    def describe(self) -> str:
        """In words, e.g. ``"y and x swapped, x negated"``; ``"as given"`` for the identity."""
        parts = ["y and x swapped"] if self.swap else []
        negated = [a for a, s in (("y", self.y_sign), ("x", self.x_sign)) if s < 0]
        if negated:
            parts.append(" and ".join(negated) + " negated")
        return ", ".join(parts) or "as given"

    def label(self) -> str:
        """Compact and JSON-able, e.g. ``"swap,-y,+x"``."""
        sign = {1: "+", -1: "-"}
        return f"{'swap' if self.swap else 'keep'},{sign[self.y_sign]}y,{sign[self.x_sign]}x"

    @classmethod
    def from_label(cls, label: str) -> Orientation:
        swap, y, x = label.split(",")
        return cls(swap == "swap", -1 if y[0] == "-" else 1, -1 if x[0] == "-" else 1)


#: The eight choices, the identity first.
ORIENTATIONS = tuple(
    Orientation(swap, y, x) for swap in (False, True) for y in (1, -1) for x in (1, -1)
)


@dataclass(frozen=True)
class OrientationSetup:
    """How an engine checks the orientation (from the profile's instrument section).

    Attributes
    ----------
    mode : ``check`` (say when another choice fits clearly better), ``auto`` (and use it),
        ``off``.
    axes : the profile's ``swap_axes``, ``y_sign`` and ``x_sign``, when the positions came
        through them (documents, a raw run), so a message can name the values to set; None
        when they came from a file, as it records them.
    rotation_deg : the profile's ``rotation_deg`` applied to those positions (0 for a file).
    """

    mode: Mode = "check"
    axes: Orientation | None = None
    rotation_deg: float = 0.0


@dataclass(frozen=True)
class OrientationCheck:
    """The outcome of :func:`check_orientation`.

    Attributes
    ----------
    verdict : ``confirmed`` (the positions as given fit clearly best), ``mismatch`` (another
        choice fits clearly better; not used), ``corrected`` (another fits clearly better and,
        with ``auto``, is used), ``undecided`` (no choice is clearly best: too noisy, too few
        frames or frames on a line).
    best : the best choice, relative to the positions as given.
    used : the choice applied to every position (the identity unless ``corrected``).
    scores : ``{label: held-out misfit}`` per choice (normalised units; the far field's
        twins share their class's).
    floor : the misfit noise alone gives (same units).
    twin_ambiguous : far field: a flip of both signs could not be tested.
    message : one line saying the above.
    warnings : the message again where the result may be wrong (``mismatch``) or its positions
        differ from the input (``corrected``).
    """

    verdict: Literal["confirmed", "mismatch", "corrected", "undecided"]
    best: Orientation
    used: Orientation
    scores: Mapping[str, float] = field(default_factory=dict)
    floor: float = 0.0
    twin_ambiguous: bool = False
    message: str = ""
    warnings: tuple[str, ...] = ()
    rotation_deg: float = 0.0

    @property
    def correction(self) -> np.ndarray | None:
        """``(2, 2)`` to apply to positions ``(y, x)`` (as column vectors); None: none."""
        return None if self.used.is_identity else self.used.transform(self.rotation_deg)

    def to_metadata(self) -> dict[str, Any]:
        """Plain JSON types for the run's metadata and the engine's saved state."""
        return {
            "verdict": self.verdict,
            "best": self.best.label(),
            "used": self.used.label(),
            "scores": {k: float(v) for k, v in self.scores.items()},
            "floor": float(self.floor),
            "twin_ambiguous": self.twin_ambiguous,
            "message": self.message,
            "warnings": list(self.warnings),
            "rotation_deg": self.rotation_deg,
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> OrientationCheck:
        return cls(
            meta["verdict"],
            Orientation.from_label(meta["best"]),
            Orientation.from_label(meta["used"]),
            dict(meta["scores"]),
            meta["floor"],
            meta["twin_ambiguous"],
            meta["message"],
            tuple(meta["warnings"]),
            meta.get("rotation_deg", 0.0),
        )


def can_judge(positions_m: np.ndarray, count: int = 20) -> bool:
    """True when the ``count`` positions nearest the middle of ``positions_m`` ``(k, 2)``
    spread along both axes (at least half the median nearest-neighbour distance): a sign can
    be told only across neighbours along its axis, so a first raster line cannot judge y."""
    if len(positions_m) < MIN_FRAMES:
        return False
    points = positions_m[nearest(positions_m, count)]
    gaps = np.hypot(*(points[:, None, :] - points[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(gaps, np.inf)
    step = float(np.median(gaps.min(axis=1)))
    extent = points.max(axis=0) - points.min(axis=0)
    return bool(step > 0 and extent.min() >= 0.5 * step)


def candidates(twin_ambiguous: bool) -> tuple[Orientation, ...]:
    """The choices to score: all eight, or in far field one of each twin pair (``y`` kept)."""
    return tuple(c for c in ORIENTATIONS if not (twin_ambiguous and c.y_sign < 0))


def trial_scorer(
    frames: np.ndarray,
    positions_m: np.ndarray,
    probe: np.ndarray,
    mean_pattern: np.ndarray,
    geometry: Geometry,
    rotation_deg: float = 0.0,
    *,
    valid: np.ndarray | None = None,
    offset: float = 0.0,
) -> Callable[[Orientation], float]:
    """``score(choice)``: the held-out misfit (:class:`~ptystream.engine.trial.HeldOutTrial`)
    of ``probe`` ``(N, N)`` held fixed with ``positions_m`` moved by ``choice`` (before
    ``rotation_deg``). In far field a choice scores as the better of itself and its twin (a
    fixed probe tells them apart, the data do not). ``frames`` are in an engine's units (far
    field centred), ``probe`` as the trial propagates it (a Fresnel geometry's phase folded
    in); ``valid`` and ``offset`` as the trial's."""
    twin = geometry.propagation != NEAR_FIELD

    def one(choice: Orientation) -> float:
        moved = positions_m @ choice.transform(rotation_deg).T
        return HeldOutTrial(frames, moved, mean_pattern, geometry, valid, offset).score(probe)

    return lambda choice: min(one(choice), one(choice.twin)) if twin else one(choice)


def check_orientation(
    score: Callable[[Orientation], float],
    positions_m: np.ndarray,
    geometry: Geometry,
    setup: OrientationSetup,
    *,
    floor: float = 0.0,
) -> OrientationCheck:
    """Score the orientations of ``positions_m`` ``(k, 2)`` (metres, as given) and judge them.

    ``score(choice)`` is a held-out misfit of the first frames with the positions moved by
    ``choice`` (lower is better; :func:`trial_scorer`, or a defocus search's best per choice);
    ``floor`` the misfit of a perfect prediction (the noise's), same units. In far field only
    one choice of each twin pair is scored (:func:`candidates`). ``setup``: the mode (``auto``
    uses a clearly better choice) and the profile's axes, which the message names.
    """
    twin_ambiguous = geometry.propagation != NEAR_FIELD
    if len(positions_m) < MIN_FRAMES or not can_judge(positions_m):
        why = f"{len(positions_m)} frames" if len(positions_m) < MIN_FRAMES else "a line of them"
        return _judged(setup, "undecided", Orientation(), {}, floor, twin_ambiguous, why)
    scores = {choice: score(choice) for choice in candidates(twin_ambiguous)}
    current = Orientation()
    best = min(scores, key=scores.__getitem__)
    others = [c for c in scores if c != best]
    labels = {c.label(): s for c, s in scores.items()}
    if best == current:
        confirmed = all(_clearly_better(scores[current], scores[c], floor) for c in others)
        verdict = "confirmed" if confirmed else "undecided"
        why = "" if confirmed else "no choice fits clearly better than the others"
        return _judged(setup, verdict, best, labels, floor, twin_ambiguous, why)
    if not _clearly_better(scores[best], scores[current], floor):
        why = "no choice fits clearly better than the positions as given"
        return _judged(setup, "undecided", best, labels, floor, twin_ambiguous, why)
    verdict = "corrected" if setup.mode == "auto" else "mismatch"
    ratio = (scores[current] - floor) / max(scores[best] - floor, 1e-30)
    return _judged(setup, verdict, best, labels, floor, twin_ambiguous, f"{ratio:.1f}")


def _clearly_better(score: float, other: float, floor: float) -> bool:
    excess, other_excess = max(score - floor, 0.0), max(other - floor, 0.0)
    return excess <= RATIO * other_excess and other - score >= MIN_GAP * floor


def _judged(
    setup: OrientationSetup,
    verdict: str,
    best: Orientation,
    scores: dict[str, float],
    floor: float,
    twin_ambiguous: bool,
    detail: str,
) -> OrientationCheck:
    """The check's outcome with its message, logged."""
    twin = (
        "; in far field a flip of both signs (the twin image) cannot be told apart"
        if twin_ambiguous
        else ""
    )
    warnings: tuple[str, ...] = ()
    if verdict == "confirmed":
        message = f"positions: the orientation as given fits clearly best{twin}"
    elif verdict == "undecided":
        message = f"positions: the orientation could not be checked ({detail}){twin}"
    else:
        fits = (
            f"the positions fit the frames clearly better with {best.describe()} "
            f"(held-out excess misfit {detail} times lower)"
        )
        if verdict == "corrected":
            message = f"{fits}; used that (instrument.orientation: auto). {_advice(setup, best)}"
        else:
            message = (
                f"{fits}; the result is probably wrong. {_advice(setup, best)}, or set "
                "instrument.orientation: auto"
            )
        message += twin
        warnings = (message,)
    log = logger.warning if warnings else logger.info
    log("%s", message)
    used = best if verdict == "corrected" else Orientation()
    return OrientationCheck(
        verdict,  # type: ignore[arg-type]
        best,
        used,
        scores,
        floor,
        twin_ambiguous,
        message,
        warnings,
        setup.rotation_deg,
    )


def _advice(setup: OrientationSetup, best: Orientation) -> str:
    """The profile lines that make ``best`` permanent, or what to do for a file's positions."""
    if setup.axes is None:
        return "The positions come from the file: correct them there"
    axes = setup.axes.then(best)
    return (
        f"To fix the profile set instrument.swap_axes: {str(axes.swap).lower()}, "
        f"instrument.y_sign: {axes.y_sign}, instrument.x_sign: {axes.x_sign}"
    )

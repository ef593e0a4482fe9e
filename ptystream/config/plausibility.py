"""Plausibility of an instrument's numbers: catching unit slips.

Pydantic checks that a number is a positive float; this module checks that it is a number an
instrument of that kind could have. An energy of 8 eV beside a 75 µm X-ray detector, a distance
of 2000 m or a 75 m pixel are almost always a unit slip (keV for eV, mm for m, µm for m), so
each finding names the key, the value, the unit the key is in and, where one explains it, the
slip with the value it was probably meant to be.

Two severities. ``refuse``: no instrument of that kind has the value (loading raises
:class:`~ptystream.config.errors.ProfileError`). ``warn``: unusual but possible (logged, and
returned so a caller can record it). The kind of instrument is read from the wavelength
together with the detector: photon energies of 0.1-100 keV are X-rays, and a detector pixel of
40 µm or more is an X-ray (hybrid pixel) detector's; cameras for light and extreme ultraviolet
have pixels of 1-30 µm. The bands are beamlines' and laboratories' ranges, not physical limits,
and each constant says where it comes from. The checks are pure arithmetic: cheap to repeat
wherever findings should be recorded. Positions in the wrong unit are refused where they reach
an engine (:func:`ptystream.engine.initial.check_positions`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from ptystream.config.errors import ProfileError
from ptystream.config.models import HC_EV_M, InstrumentSettings, Profile
from ptystream.types import FAR_FIELD, NEAR_FIELD, Geometry

__all__ = [
    "Finding",
    "Severity",
    "check_geometry",
    "check_instrument",
    "check_profile",
    "ensure_plausible",
]

logger = logging.getLogger(__name__)

#: Photon energies of X-ray ptychography in eV, soft (carbon edge 284 eV) to hard X-rays.
XRAY_BAND_EV = (100.0, 100e3)
#: Smallest pixel (m) of an X-ray hybrid pixel detector: Timepix 55 µm, Eiger 75, Pilatus 172.
XRAY_DETECTOR_PIXEL_M = 40e-6
#: Shortest wavelength (m) of any ptychography: 300 kV electrons are at 1.97 pm.
MIN_WAVELENGTH_M = 1e-12
#: Longest wavelength (m) refused outright: terahertz ptychography works at 0.1-3 mm.
MAX_WAVELENGTH_M = 12e-3
#: Longest sample-to-detector distance (m) before a warning (flight tubes reach about 30 m).
LONG_DISTANCE_M = 30.0
#: Longest distance (m) at all (refused beyond; also focus-to-sample and defocus).
MAX_DISTANCE_M = 100.0
#: Largest detector pixel pitch (m) without a warning, and at all.
LARGE_PIXEL_M, MAX_PIXEL_M = 1e-3, 1e-2
#: Smallest detector pixel pitch (m) without a warning (an effective pixel behind optics is
#: below a camera's 0.5 µm), and at all.
SMALL_PIXEL_M, MIN_PIXEL_M = 1e-7, 1e-9
#: Frame sides (px): detectors are at most 4k wide; 16 frames of 16384² float32 take 16 GiB.
LARGE_FRAME_PX, MAX_FRAME_PX = 4096, 16384
#: Shortest focus-to-sample distance (m) without a warning: cone beams magnify up to ~1e4.
MIN_FOCUS_M = 1e-4
#: Largest probe defocus (m) without a warning: focused beams are defocused by µm to cm.
LARGE_DEFOCUS_M = 1.0


class Severity(StrEnum):
    REFUSE = "refuse"
    """No instrument of that kind has the value: the profile or input is refused."""
    WARN = "warn"
    """Unusual but possible: logged and recorded."""


@dataclass(frozen=True)
class Finding:
    """One implausible number: its key, value and unit, what is wrong, and the likely slip."""

    key: str
    """The profile key (``instrument.energy_eV``) or derived quantity named."""
    value: float
    """The value as given (in ``unit``)."""
    unit: str
    """The unit the key is in."""
    severity: Severity
    problem: str
    """Why the value is implausible, in words."""
    slip: str | None = None
    """The likely slip and the value probably meant, or None when no common slip explains it."""

    @property
    def message(self) -> str:
        """One line: key, value, unit, problem and slip."""
        hint = f"likely slip: {self.slip}" if self.slip else "check the value and its unit"
        return f"{self.key} = {_fmt(self.value)} ({self.unit}): {self.problem}; {hint}"

    def as_dict(self) -> dict[str, str | float | None]:
        """JSON-able, for a result's metadata."""
        return {**dataclasses.asdict(self), "severity": str(self.severity)}


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _length(metres: float) -> str:
    """``metres`` in a readable unit: ``155 nm``, ``75 µm``, ``2 m``."""
    for scale, unit in ((1e3, "km"), (1.0, "m"), (1e-3, "mm"), (1e-6, "µm"), (1e-9, "nm")):
        if abs(metres) >= scale:
            return f"{metres / scale:.3g} {unit}"
    return f"{metres / 1e-12:.3g} pm"


def _band(energy_ev: float) -> str:
    """The name of the radiation at photon energy ``energy_ev``."""
    bands = [(0.05, "far-infrared or terahertz"), (1.6, "infrared"), (3.3, "visible light")]
    bands += [(6.5, "ultraviolet"), (10.0, "vacuum ultraviolet"), (100.0, "extreme ultraviolet")]
    for top, name in [*bands, (XRAY_BAND_EV[1], "X-rays")]:
        if energy_ev < top:
            return name
    return "beyond hard X-rays"


def _unit_slip(name: str, value: float, unit: str, factor: float, looks_like: str) -> str:
    meant = _fmt(value * factor)
    return f"{_fmt(value)} looks like {looks_like}: {name} is in {unit}, did you mean {meant}?"


def _factor_slip(name: str, value: float, factor: float) -> str:
    ratio = (
        f"{_fmt(1 / factor)} times too large" if factor < 1 else f"{_fmt(factor)} times too small"
    )
    return f"{name} {_fmt(value)} may be {ratio}: did you mean {_fmt(value * factor)}?"


def _kev_slip(lam: float, wavelength_given: bool) -> str:
    """The slip of an X-ray energy in keV given as eV (or a wavelength 1000 times too long)."""
    if wavelength_given:
        return _factor_slip("wavelength_m", lam, 1e-3)
    return _unit_slip("energy_eV", HC_EV_M / lam, "eV", 1e3, "keV")


def _first_slip(
    name: str,
    value: float,
    unit: str,
    candidates: tuple[tuple[float, str], ...],
    ok: Callable[[float], bool],
) -> str | None:
    """:func:`_unit_slip` for the first ``(factor, looks_like)`` of ``candidates`` for which
    ``ok(value * factor)``; None when there is none."""
    found = next(((f, u) for f, u in candidates if ok(value * f)), None)
    return None if found is None else _unit_slip(name, value, unit, *found)


def _looks_like_kev(energy_ev: float) -> bool:
    """Below the X-ray band, but in it read as keV."""
    return energy_ev < XRAY_BAND_EV[0] <= 1e3 * energy_ev <= XRAY_BAND_EV[1]


# -- the instrument's numbers -------------------------------------------------------------------


def _wavelength(g: Geometry, prefix: str, wavelength_given: bool) -> list[Finding]:
    """Energy (or wavelength) against the bands, and against the detector's kind."""
    lam = g.wavelength_m
    energy = HC_EV_M / lam
    if wavelength_given:
        key, value, unit = f"{prefix}wavelength_m", lam, "m"
    else:
        key, value, unit = f"{prefix}energy_eV", energy, "eV"
    what = f"{_length(lam)}, {energy:.3g} eV: {_band(energy)}"
    if lam > MAX_WAVELENGTH_M or lam < MIN_WAVELENGTH_M:
        slip = None
        if wavelength_given:
            candidates = ((1e-9, "nm"), (1e-10, "Å"))
            slip = _first_slip("wavelength_m", lam, "m", candidates, lambda v: 1e-11 <= v <= 3e-5)
        limit = "longer than any ptychography's" if lam > MAX_WAVELENGTH_M else "shorter than"
        limit += " (terahertz: 0.1-3 mm)" if lam > MAX_WAVELENGTH_M else " 300 kV electrons' 2 pm"
        return [Finding(key, value, unit, Severity.REFUSE, f"{what}, {limit}", slip)]
    if _looks_like_kev(energy) and g.detector_pixel_size_m >= XRAY_DETECTOR_PIXEL_M:
        pixel = _length(g.detector_pixel_size_m)
        problem = f"{what}, with a {pixel} detector pixel (an X-ray detector's; cameras for light"
        slip = _kev_slip(lam, wavelength_given)
        return [Finding(key, value, unit, Severity.REFUSE, f"{problem} have 1-30 µm)", slip)]
    if energy > XRAY_BAND_EV[1] and not wavelength_given:
        problem = f"{what}, above the X-ray band of ptychography (for electrons give wavelength_m)"
        return [Finding(key, value, unit, Severity.WARN, problem)]
    if energy < 0.05:
        slip = _factor_slip("wavelength_m", lam, 1e-3) if wavelength_given else None
        return [Finding(key, value, unit, Severity.WARN, what, slip)]
    return []


def _distance(name: str, key: str, value: float, what: str, warn_above: float) -> list[Finding]:
    """A length in metres that is normally between a few mm and ``warn_above``."""
    if value <= warn_above:
        return []
    candidates = ((1e-3, "mm"), (1e-6, "µm"))
    slip = _first_slip(name, value, "m", candidates, lambda v: 1e-6 <= v <= min(warn_above, 10.0))
    if value > MAX_DISTANCE_M:
        problem = f"a {what} of {_length(value)}: no instrument is that long"
        return [Finding(key, value, "m", Severity.REFUSE, problem, slip)]
    problem = f"a {what} of {_length(value)} is unusually long (beyond {_length(warn_above)})"
    return [Finding(key, value, "m", Severity.WARN, problem, slip)]


def _pixel(key: str, pixel: float) -> list[Finding]:
    """A detector pixel pitch in metres (cameras 1-30 µm, X-ray detectors 55-172 µm)."""
    if SMALL_PIXEL_M <= pixel <= LARGE_PIXEL_M:
        return []
    if pixel < SMALL_PIXEL_M:
        severity = Severity.REFUSE if pixel < MIN_PIXEL_M else Severity.WARN
        problem = f"a {_length(pixel)} pixel is smaller than any camera's (0.5 µm or more)"
        return [Finding(key, pixel, "m", severity, problem)]
    candidates = ((1e-6, "µm"), (1e-3, "mm"))
    slip = _first_slip(
        "detector_pixel_size_m", pixel, "m", candidates, lambda v: 5e-7 <= v <= LARGE_PIXEL_M
    )
    severity = Severity.REFUSE if pixel > MAX_PIXEL_M else Severity.WARN
    problem = f"a {_length(pixel)} pixel; detector pixels are 1 µm to 1 mm (Pilatus: 172 µm)"
    return [Finding(key, pixel, "m", severity, problem, slip)]


def _frame(key: str, frame_px: int) -> list[Finding]:
    """The frame's side in pixels (a slip: the pixel count, side squared)."""
    if frame_px <= LARGE_FRAME_PX:
        return []
    side = math.isqrt(frame_px)
    slip = None
    if side * side == frame_px:
        slip = f"{frame_px} = {side}²: frame_px is the frame's side in pixels, did you mean {side}?"
    gib = 16 * 4 * frame_px**2 / 2**30
    severity = Severity.REFUSE if frame_px > MAX_FRAME_PX else Severity.WARN
    problem = (
        f"a {frame_px}² frame (a batch of 16 takes {gib:.3g} GiB); detectors are at most 4k wide"
    )
    return [Finding(key, frame_px, "pixels", severity, problem, slip)]


def _inputs(
    g: Geometry, prefix: str, wavelength_given: bool, frame_known: bool = True
) -> list[Finding]:
    """Findings on each number of ``g`` by itself (and the energy with the detector); the frame
    size only if ``frame_known``."""
    found = _wavelength(g, prefix, wavelength_given)
    what = "sample-to-detector distance"
    found += _distance("distance_m", f"{prefix}distance_m", g.distance_m, what, LONG_DISTANCE_M)
    found += _pixel(f"{prefix}detector_pixel_size_m", g.detector_pixel_size_m)
    if frame_known:
        found += _frame(f"{prefix}frame_px", g.frame_px)
    if (z1 := g.focus_to_sample_m) is not None:
        key, what = f"{prefix}focus_to_sample_m", "focus-to-sample distance"
        found += _distance("focus_to_sample_m", key, z1, what, 10.0)
        if z1 < MIN_FOCUS_M:
            problem = f"a {what} of {_length(z1)} (a magnification of {g.magnification:.3g})"
            found.append(Finding(key, z1, "m", Severity.WARN, problem))
    return found


def _refused(found: list[Finding]) -> bool:
    return any(f.severity is Severity.REFUSE for f in found)


def _sampling_slip(g: Geometry, prefix: str, wavelength_given: bool) -> str | None:
    """The one input which, 1000 or a million times larger (the wavelength 1000 times smaller:
    keV for eV), makes the object pixel at least a wavelength and adds no finding on any input;
    None if none does."""
    slips = [("wavelength_m", 1e-3, _kev_slip(g.wavelength_m, wavelength_given))]
    for name in ("focus_to_sample_m", "detector_pixel_size_m", "distance_m"):
        value = getattr(g, name)
        if value is not None:
            slips += [(name, factor, _factor_slip(name, value, factor)) for factor in (1e3, 1e6)]
    before = _inputs(g, prefix, wavelength_given)
    for name, factor, slip in slips:
        changed = dataclasses.replace(g, **{name: getattr(g, name) * factor})
        fits = changed.object_pixel_size_m >= changed.wavelength_m
        if fits and all(f in before for f in _inputs(changed, prefix, wavelength_given)):
            return slip
    return None


def _sampling(g: Geometry, prefix: str, wavelength_given: bool) -> list[Finding]:
    """The object pixel against the wavelength, and the far field's Fresnel phase."""
    dx, lam = g.object_pixel_size_m, g.wavelength_m
    found = []
    if dx < lam:
        if g.propagation == NEAR_FIELD:
            how = "detector pixel / magnification"
            why = "no detail finer than half a wavelength propagates"
        else:
            how = "lambda z / (N dx)"
            why = f"the frame would take light scattered up to NA {lam / (2 * dx):.3g} (1 is 90°)"
        severity = Severity.REFUSE if dx < lam / 2 else Severity.WARN
        problem = f"the object pixel ({how}) is {dx / lam:.3g} wavelengths of {_length(lam)}: {why}"
        slip = _sampling_slip(g, prefix, wavelength_given)
        found.append(Finding("object_pixel_size_m", dx, "m", severity, problem, slip))
    return found + _fresnel(g, prefix, wavelength_given)


def _fresnel(g: Geometry, prefix: str, wavelength_given: bool) -> list[Finding]:
    """far_field where the Fresnel phase pi r^2 / (lambda z) at the window's edge (r = N dx_obj
    / 2) exceeds pi N / 4: it then changes by more than pi per object pixel there, so not even
    the probe can absorb it, and the Fraunhofer model does not hold."""
    lam, n = g.wavelength_m, g.frame_px
    phase = math.pi * lam * g.distance_m / (4 * g.detector_pixel_size_m**2)
    if g.propagation != FAR_FIELD or phase <= math.pi * n / 4:
        return []
    slip = None
    if _looks_like_kev(HC_EV_M / lam):
        slip = "if this is an X-ray instrument, " + _kev_slip(lam, wavelength_given)
    problem = (
        f"{prefix}propagation is far_field, but the Fresnel phase at the probe window's edge is "
        f"{phase:.3g} rad (more than pi N / 4 = {math.pi * n / 4:.3g} cannot be sampled): use "
        "propagation: fresnel"
    )
    return [Finding("fresnel_phase_rad", phase, "rad", Severity.WARN, problem, slip)]


def check_geometry(
    geometry: Geometry,
    *,
    prefix: str = "instrument.",
    wavelength_given: bool = False,
    frame_known: bool = True,
) -> list[Finding]:
    """Findings on a geometry's numbers: wavelength (against the detector's kind), distance,
    detector pixel, frame size, focus-to-sample distance, then the object pixel against the
    wavelength (only when no single number is refused, so that one slip gives one message).

    ``prefix`` is put before each key (a profile's are under ``instrument.``);
    ``wavelength_given``: name ``wavelength_m`` (metres) rather than ``energy_eV`` (eV), the
    key the user wrote. ``frame_known`` False: the frame size comes from the detector's frames
    (not yet seen), so neither it nor the object pixel (which depends on it) is checked.
    """
    found = _inputs(geometry, prefix, wavelength_given, frame_known)
    if _refused(found) or not frame_known:
        return found
    return found + _sampling(geometry, prefix, wavelength_given)


def check_instrument(
    instrument: InstrumentSettings,
    *,
    wavelength_given: bool = False,
    frame_px: int | None = None,
    binning: int = 1,
) -> list[Finding]:
    """:func:`check_geometry` of the instrument's geometry, plus its probe defocus. The frames
    are ``frame_px`` of ``binning``² detector pixels (default the instrument's ``frame_px``);
    with no frame size known, what depends on it is not checked."""
    frame_px = frame_px or instrument.frame_px
    found = check_geometry(
        instrument.geometry(frame_px or 1, binning=binning),
        wavelength_given=wavelength_given,
        frame_known=frame_px is not None,
    )
    defocus = abs(instrument.probe_defocus_m)
    if defocus > LARGE_DEFOCUS_M:
        name = "probe_defocus_m"
        found += _distance(name, f"instrument.{name}", defocus, "probe defocus", LARGE_DEFOCUS_M)
    return found


def check_profile(profile: Profile, *, wavelength_given: bool = False) -> list[Finding]:
    """Findings on a profile's instrument (:func:`check_instrument`). Pure and cheap: call it
    again wherever the warnings should be recorded (a result's metadata)."""
    return check_instrument(
        profile.instrument,
        wavelength_given=wavelength_given,
        frame_px=profile.frame_px,
        binning=profile.preprocess.bin,
    )


def ensure_plausible(
    profile: Profile,
    *,
    source: str,
    wavelength_given: bool = False,
    known: list[Finding] | None = None,
) -> list[Finding]:
    """:func:`check_profile`: raise :class:`ProfileError` naming every refused number, else log
    each warning (``source``: e.g. ``profile demo.yaml``; those in ``known`` are not logged
    again) and return them all."""
    found = check_profile(profile, wavelength_given=wavelength_given)
    refused = [f.message for f in found if f.severity is Severity.REFUSE]
    if refused:
        raise ProfileError(f"{source} is implausible: {'; '.join(refused)}")
    for finding in found:
        if finding not in (known or []):
            logger.warning("%s: %s", source, finding.message)
    return found

"""``ptystream calibrate``: the checks a reconstruction runs at its start, run alone on a finished
scan, with the profile lines that make their findings permanent.

The engine's first look at the frames (:meth:`~ptystream.engine.intake.FrameIntake._first_look`)
checks the positions' orientation (:mod:`ptystream.engine.orientation`) and, in far field,
searches the initial probe's defocus; in near field the propagation distance is searched as
``engine.distance_search_m`` does (the profile's range, or half to one and a half times the
nominal distance). Far field needs no TensorFlow (the numpy mPIE engine takes the frames).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np

from ptystream.config import Algorithm, Profile
from ptystream.engine import EngineSetup, make_engine, prepare
from ptystream.engine.orientation import Orientation, OrientationCheck, OrientationSetup
from ptystream.io.scans import ScanFile
from ptystream.offline.reconstruct import geometry_for, preprocess_scan
from ptystream.types import NEAR_FIELD, ScanPlan

__all__ = ["Calibration", "calibrate_scan"]

logger = logging.getLogger(__name__)

#: Without ``engine.distance_search_m``, the range searched around the nominal distance.
DISTANCE_RANGE = (0.5, 1.5)


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate_scan` found.

    Attributes
    ----------
    orientation : the check of the positions' axes.
    axes : the profile's ``swap_axes``, ``y_sign``, ``x_sign`` that make the best choice
        permanent; None for a file's positions (the profile's keys do not apply to them).
    probe_defocus_m : far field: the defocus chosen for the initial probe (NaN elsewhere).
    distance_m : near field, plane wave: the distance fitted (``distance_m``; NaN elsewhere).
    focus_to_sample_m : near field, cone beam: the focus-to-sample distance that gives the
        fitted propagation distance with the sample-to-detector distance as given (NaN
        elsewhere).
    propagation_distance_m : near field: the effective propagation distance fitted.
    nominal_m : near field: the profile's value of the distance fitted (``distance_m`` or
        ``focus_to_sample_m``), to compare: the search ranks distances by the loss after a few
        passes, which is not proof (on the P25 scan it chose 5.03 mm for the beamline's 3.65).
    """

    orientation: OrientationCheck
    axes: Orientation | None
    probe_defocus_m: float = math.nan
    distance_m: float = math.nan
    focus_to_sample_m: float = math.nan
    propagation_distance_m: float = math.nan
    nominal_m: float = math.nan

    def profile_lines(self) -> list[str]:
        """YAML to paste into the profile (the ``instrument:`` section)."""
        lines = ["instrument:"]
        best = self.orientation.best
        if self.orientation.verdict in ("mismatch", "corrected"):
            if self.axes is None:
                lines.append("  orientation: auto      # the file's positions: " + best.describe())
            else:
                lines += [
                    f"  swap_axes: {str(self.axes.swap).lower()}",
                    f"  y_sign: {self.axes.y_sign}",
                    f"  x_sign: {self.axes.x_sign}",
                ]
        if math.isfinite(self.probe_defocus_m):
            lines.append(f"  probe_defocus_m: {self.probe_defocus_m:.4g}")
        if math.isfinite(self.distance_m):
            lines.append(
                f"  distance_m: {self.distance_m:.6g}   # the profile's: {self.nominal_m:.6g}"
            )
        if math.isfinite(self.focus_to_sample_m):
            lines.append(
                f"  focus_to_sample_m: {self.focus_to_sample_m:.6g}   # the profile's: "
                f"{self.nominal_m:.6g}; propagation distance {self.propagation_distance_m:.6g} m"
            )
        return lines if len(lines) > 1 else []


def calibrate_scan(
    scan: ScanFile,
    profile: Profile,
    *,
    positions_from_profile: bool = False,
    dark: np.ndarray | None = None,
) -> Calibration:
    """Check ``scan``'s orientation and, in far field, its probe defocus, in near field its
    distance, on its frames pre-processed as the profile says (``dark``: a dark stream's).
    ``positions_from_profile``: the positions came through the profile's axes (a raw run's
    readbacks), so the result names the values of those keys."""
    scan, _ = preprocess_scan(scan, profile, dark=dark)
    geometry = geometry_for(scan, profile)
    near = geometry.propagation == NEAR_FIELD
    setup = EngineSetup.from_profile(
        profile,
        geometry=geometry,
        plan=ScanPlan.covering(scan.positions_m),
        detector_mask=scan.valid_pixels,
        algorithm=Algorithm.AD if near else Algorithm.MPIE,
    )
    orientation = setup.orientation
    if not positions_from_profile:
        orientation = OrientationSetup()
    setup = setup.replace(orientation=dataclasses.replace(orientation, mode="auto"))
    prepare(setup.settings)
    engine = make_engine(setup)
    engine.add_frames(scan.frames, scan.positions_m)
    check = engine.orientation
    assert check is not None, "the check runs unless the mode is off"
    axes = orientation.axes.then(check.best) if orientation.axes else None
    if not near:
        return Calibration(check, axes, probe_defocus_m=engine.probe_defocus_m)
    settings = setup.settings
    z = geometry.propagation_distance_m
    lo, hi = settings.distance_search_m or (DISTANCE_RANGE[0] * z, DISTANCE_RANGE[1] * z)
    engine.warm_up()
    found, _ = engine.search_distance(lo, hi, settings.distance_search_passes)
    z1, z2 = geometry.focus_to_sample_m, geometry.distance_m
    if z1 is None:
        return Calibration(
            check, axes, distance_m=found, propagation_distance_m=found, nominal_m=z2
        )
    # cone beam: z = z1 z2 / (z1 + z2) is close to z1 when z2 >> z1, so z fixes z1 well and z2
    # hardly at all: z1 = z z2 / (z2 - z) with the (measured) sample-to-detector z2 kept
    return Calibration(
        check,
        axes,
        focus_to_sample_m=found * z2 / (z2 - found),
        propagation_distance_m=found,
        nominal_m=z1,
    )

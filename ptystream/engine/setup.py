"""What an engine needs to reconstruct one scan, as one value built once from the profile."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ptystream.config import Algorithm, EngineSettings, Profile
from ptystream.engine.initial import read_probe_file
from ptystream.engine.orientation import Orientation, OrientationSetup
from ptystream.types import Geometry, ScanPlan

__all__ = ["EngineSetup"]


@dataclass(frozen=True)
class EngineSetup:
    """Everything an engine is built from (:func:`ptystream.engine.make_engine`).

    Attributes
    ----------
    geometry : wavelength, distance, detector pixel, frame size and propagation model.
    settings : the profile's engine settings (algorithm, batch size, learning rates, ...).
    plan : planned number of points and position extent; sizes the canvas and frame buffer so
        that a normal scan never recompiles. Unknown values are grown into.
    read_noise_counts : Gaussian read noise in counts (the loss's variance offset); None:
        estimated from the first frames (:func:`ptystream.engine.noise.noise_model`).
    probe_defocus_m : nominal defocus in metres, used to build the initial probe from the
        first frames' mean pattern.
    detector_mask : boolean ``(N, N)`` in the frames' orientation, True where a pixel is
        valid (gaps, hot pixels and a beamstop are False); None: all valid.
    initial_probe : complex ``(N, N)`` probe or ``(M, N, N)`` modes to start from (a previous
        scan's, for a warm start across scans), rescaled to the power of the first frames;
        None: built from the optics.
    orientation : how the positions' orientation is checked on the first frames
        (``instrument.orientation``) and the profile's axes it names in its advice; a scan
        file's positions are checked as the file gives them (``axes`` None).

    ``geometry`` is None only in a set-up made before the detector's frames were seen (a
    profile without a fixed frame size); an engine needs it given (:meth:`replace`).
    """

    geometry: Geometry | None
    settings: EngineSettings
    plan: ScanPlan = field(default_factory=ScanPlan)
    read_noise_counts: float | None = None
    probe_defocus_m: float = 0.0
    detector_mask: np.ndarray | None = None
    initial_probe: np.ndarray | None = None
    orientation: OrientationSetup = field(default_factory=OrientationSetup)

    @classmethod
    def from_profile(
        cls,
        profile: Profile,
        *,
        geometry: Geometry | None = None,
        plan: ScanPlan | None = None,
        detector_mask: np.ndarray | None = None,
        algorithm: Algorithm | str | None = None,
    ) -> EngineSetup:
        """The profile's engine settings and instrument (read noise, defocus, and the geometry
        unless ``geometry`` is given, e.g. a scan file's), and the probe of
        ``engine.initial_probe_file`` if it names one (:func:`~ptystream.engine.initial.
        read_probe_file`); ``algorithm`` (``ad``, ``epie``, ``mpie``) overrides
        ``engine.algorithm``."""
        settings = profile.engine
        if algorithm is not None:
            settings = settings.model_copy(update={"algorithm": Algorithm(algorithm)})
        inst = profile.instrument
        if geometry is None and profile.frame_px is not None:
            geometry = profile.geometry()
        probe_file = settings.initial_probe_file if geometry is not None else None
        return cls(
            geometry=geometry,
            settings=settings,
            plan=plan or ScanPlan(),
            read_noise_counts=inst.read_noise_counts,
            probe_defocus_m=inst.probe_defocus_m,
            detector_mask=detector_mask,
            initial_probe=(
                None if probe_file is None else read_probe_file(probe_file, geometry.frame_px)
            ),
            orientation=OrientationSetup(
                inst.orientation,
                Orientation(inst.swap_axes, inst.y_sign, inst.x_sign),
                inst.rotation_deg,
            ),
        )

    def replace(self, **changes) -> EngineSetup:
        """A copy with ``changes`` (field names as above)."""
        return dataclasses.replace(self, **changes)

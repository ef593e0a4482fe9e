"""Leaf vocabulary shared by every module: plain frozen dataclasses over numpy.

Nothing here knows about documents, TensorFlow or Tiled. Units are SI and written in the names;
arrays are row-major ``(y, x)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "FAR_FIELD",
    "FRESNEL",
    "NEAR_FIELD",
    "Estimate",
    "FrameRecord",
    "Geometry",
    "RunStart",
    "RunStop",
    "ScanPlan",
]


FAR_FIELD = "far_field"
#: Far field at a finite distance: the Fresnel phase exp(i pi r^2 / (lambda z)) over the probe
#: window is folded into the probe before the Fourier transform.
FRESNEL = "fresnel"
NEAR_FIELD = "near_field"


@dataclass(frozen=True)
class Geometry:
    """Ptychography geometry, far field (Fraunhofer) or near field (angular spectrum).

    Attributes
    ----------
    wavelength_m : X-ray wavelength in metres.
    distance_m : sample-to-detector distance in metres.
    detector_pixel_size_m : detector pixel pitch in metres (square pixels).
    frame_px : side of the (square) frame in pixels.
    propagation : ``"far_field"`` (Fraunhofer), ``"fresnel"`` (far field at a finite distance)
        or ``"near_field"`` (angular spectrum).
    focus_to_sample_m : near field with a divergent (cone) beam: distance from the focus to the
        sample, for the Fresnel scaling theorem; None for a plane wave.
    """

    wavelength_m: float
    distance_m: float
    detector_pixel_size_m: float
    frame_px: int
    propagation: str = FAR_FIELD
    focus_to_sample_m: float | None = None

    def __post_init__(self) -> None:
        if self.propagation not in (FAR_FIELD, FRESNEL, NEAR_FIELD):
            raise ValueError(
                f"propagation must be {FAR_FIELD!r}, {FRESNEL!r} or {NEAR_FIELD!r}, "
                f"got {self.propagation!r}"
            )
        if self.focus_to_sample_m is not None and self.propagation != NEAR_FIELD:
            raise ValueError("focus_to_sample_m applies to the near field only")

    @property
    def magnification(self) -> float:
        """Geometric magnification (z1 + z2) / z1 of a cone beam; 1 for a plane wave."""
        if self.focus_to_sample_m is None:
            return 1.0
        return (self.focus_to_sample_m + self.distance_m) / self.focus_to_sample_m

    @property
    def propagation_distance_m(self) -> float:
        """Distance the exit wave is propagated over: z2, or z1 z2 / (z1 + z2) in a cone beam."""
        return self.distance_m / self.magnification

    @property
    def object_pixel_size_m(self) -> float:
        """Object pixel in metres: lambda z / (N dx) in the far field, dx / M in the near field."""
        if self.propagation == NEAR_FIELD:
            return self.detector_pixel_size_m / self.magnification
        return self.wavelength_m * self.distance_m / (self.frame_px * self.detector_pixel_size_m)

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (self.frame_px, self.frame_px)

    def describe(self) -> dict[str, float | int]:
        """The numbers a result's metadata records (``geometry``), in SI units."""
        return {
            "wavelength_m": self.wavelength_m,
            "distance_m": self.distance_m,
            "detector_pixel_size_m": self.detector_pixel_size_m,
            "frame_px": self.frame_px,
            "object_pixel_size_m": self.object_pixel_size_m,
        }


@dataclass(frozen=True)
class ScanPlan:
    """What is known about a scan before its first frame (from the start document).

    Attributes
    ----------
    n_points : number of planned positions, or None when unknown.
    extent_m : ``((y_min, y_max), (x_min, x_max))`` of the planned probe positions in metres,
        or None when unknown (the engine then grows its canvas as positions arrive).
    """

    n_points: int | None = None
    extent_m: tuple[tuple[float, float], tuple[float, float]] | None = None

    @classmethod
    def covering(cls, positions_m: np.ndarray) -> ScanPlan:
        """What a start document would announce for ``positions_m`` ``(n, 2)`` (metres): the
        number of points and their extent."""
        p = np.asarray(positions_m, dtype=np.float64)
        extent = ((p[:, 0].min(), p[:, 0].max()), (p[:, 1].min(), p[:, 1].max()))
        return cls(n_points=len(p), extent_m=extent)


@dataclass(frozen=True)
class RunStart:
    """A run accepted for reconstruction."""

    run_uid: str
    geometry: Geometry | None
    """None while the frame size is not known (it comes from the detector's frames)."""
    plan: ScanPlan
    scan_id: int | None = None
    profile: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FrameRecord:
    """One acquisition point as parsed from a document: cheap to build on the RunEngine thread.

    ``frame`` is the detector image as delivered (not yet validated); ``position_m`` is the probe
    position on the sample ``(y, x)`` in metres, or None when it travels in another record.
    ``dark``: a frame of the dark stream (``preprocess.dark_stream``), not an acquisition point.
    """

    run_uid: str
    seq_num: int
    frame: np.ndarray | None = None
    position_m: tuple[float, float] | None = None
    dark: bool = False


@dataclass(frozen=True)
class RunStop:
    """The end of a run: ``exit_status`` is bluesky's ("success", "abort", "fail")."""

    run_uid: str
    exit_status: str
    reason: str = ""


@dataclass(frozen=True)
class Estimate:
    """A snapshot of a reconstruction, as numpy arrays.

    Attributes
    ----------
    object : complex64 ``(H, W)`` transmission on the object canvas (dimensionless: 1 is
        empty space), or ``(S, H, W)`` for a multislice sample: ``S`` slices along the beam,
        the first met by the beam first.
    probe : complex64 ``(N, N)`` illumination, or ``(M, N, N)`` mutually incoherent modes
        (orthogonal, strongest first) for a mixed-state probe, in square roots of detector
        counts: the exit wave ``probe * object`` (through the slices for a thick sample)
        propagated with orthonormal transforms (far field: ``fft2(..., norm="ortho")``,
        centred) predicts the measured frames in counts, summed over modes. The overall scale
        between object and probe, which the data cannot fix, is set by the initial probe's
        power (the measured mean pattern's), so the object's mean transmission stays near 1.
    object_origin_m : stage position ``(y, x)`` in metres of the centre of object pixel ``[0, 0]``.
    pixel_size_m : object pixel size in metres.
    positions_m : ``(n, 2)`` probe positions ``(y, x)`` in metres of the frames used.
    illumination : float32 ``(H, W)``, summed probe intensity over the positions used.
    iteration : number of optimiser steps taken so far.
    n_frames : number of frames the estimate has seen.
    frames_waiting : of these, frames not yet in any optimiser step (just added).
    loss : ``(k, 2)`` float64 rows of ``(iteration, loss)``.
    final : True for the result published at the end of a run.
    distance_m : near field: the propagation distance in metres (fitted when trained); NaN in
        the far field.
    slice_gaps_m : multislice: the ``S - 1`` distances between neighbouring slices in metres
        (fitted when trained); empty for a thin object.
    noise : the noise model the engine fitted to the first frames and used, as plain JSON
        types (:meth:`ptystream.engine.noise.NoiseModel.to_metadata`: the estimate, the read
        noise used and its source, the loss, warnings); None before the first frames.
    probe_defocus_m : far field: the defocus in metres the initial probe was built with, the
        one the search chose (``engine.probe_defocus_search``) or the nominal one; NaN where
        the probe was not built from a defocus (near field, a given probe) or is not known (an
        engine resumed from a saved state).
    training : how the last refinement went (:meth:`ptystream.engine.guard.GuardReport.
        to_metadata`: the pass kept, whether it stopped early, restarts after a divergence, the
        rate factor; and ``tv_weight``, the total variation's weight the noise gave); None for
        an engine without the guard.
    orientation : the check of the positions' axes against the first frames, as plain JSON
        types (:meth:`ptystream.engine.orientation.OrientationCheck.to_metadata`: the verdict,
        the choice used, the scores, a message, warnings); None when not checked.
    warnings : what the engine detected that may make the result wrong (a divergence), besides
        the noise model's and the orientation check's.
    """

    object: np.ndarray
    probe: np.ndarray
    object_origin_m: tuple[float, float]
    pixel_size_m: float
    positions_m: np.ndarray
    illumination: np.ndarray
    iteration: int
    n_frames: int
    loss: np.ndarray
    final: bool = False
    distance_m: float = float("nan")
    frames_waiting: int = 0
    slice_gaps_m: tuple[float, ...] = ()
    noise: Mapping[str, Any] | None = None
    probe_defocus_m: float = float("nan")
    training: Mapping[str, Any] | None = None
    orientation: Mapping[str, Any] | None = None
    warnings: tuple[str, ...] = ()

    def notes(self) -> list[str]:
        """One line each for the noise model used, the initial probe's defocus, the total
        variation's weight, the orientation check, an early stop and every warning: what a
        command prints after a reconstruction."""
        lines = []
        noise = dict(self.noise or {})
        if noise:
            lines.append(
                f"noise: {noise['loss']} loss, read noise {noise['read_noise_counts']:.3g} "
                f"counts ({noise['read_noise_source']})"
            )
        if np.isfinite(self.probe_defocus_m):
            lines.append(f"initial probe: defocus {self.probe_defocus_m * 1e3:.4g} mm")
        training = dict(self.training or {})
        if "tv_weight" in training:
            lines.append(f"total variation weight {training['tv_weight']:.3g}")
        if training.get("stopped_early"):
            lines.append(
                f"stopped early after pass {training['passes']}: the held-out misfit stopped "
                f"improving; kept pass {training['best_pass']}"
            )
        orientation = dict(self.orientation or {})
        if orientation and not orientation["warnings"]:
            lines.append(orientation["message"])
        warnings = [*noise.get("warnings", []), *orientation.get("warnings", []), *self.warnings]
        return lines + [f"warning: {w}" for w in warnings]

    @property
    def n_slices(self) -> int:
        """Slices of the object along the beam (1 for a thin object)."""
        return self.object.shape[0] if self.object.ndim == 3 else 1

    @property
    def projected_object(self) -> np.ndarray:
        """The object ``(H, W)``: the product of the slices of a multislice object (the
        transmission a thin model would see), the object itself otherwise."""
        return np.prod(self.object, axis=0) if self.object.ndim == 3 else self.object

    @property
    def last_loss(self) -> float:
        return float(self.loss[-1, 1]) if len(self.loss) else float("nan")

    def is_finite(self) -> bool:
        """True when object, probe and positions are all finite (never publish otherwise)."""
        return bool(
            np.isfinite(self.object).all()
            and np.isfinite(self.probe).all()
            and np.isfinite(self.positions_m).all()
        )

"""The pydantic models of an instrument profile: one validated, documented model per section.

Unknown keys are errors (a typo must never be silently ignored at a beamline). Units are in the
field names. Reading YAML, overrides and error messages are in :mod:`ptystream.config.loading`
and :mod:`ptystream.config.errors`.
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ptystream.types import FAR_FIELD, NEAR_FIELD, Geometry

__all__ = [
    "HC_EV_M",
    "Algorithm",
    "EngineSettings",
    "IngestSettings",
    "InstrumentSettings",
    "LossKind",
    "PieSettings",
    "PreprocessSettings",
    "ProbeKind",
    "Profile",
    "PublishSettings",
    "SimSettings",
    "SliceRegulariser",
    "TrajectoryKind",
]

_STRICT = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

#: h*c in eV*m, to turn photon energy into wavelength.
HC_EV_M = 1.239841984e-6


def _positive_number(value: Any, key: str) -> float:
    """``value`` read as pydantic reads a float field (a number or a numeric string), > 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not (math.isfinite(number) and number > 0):
        raise ValueError(f"{key} must be a positive number, got {value!r}")
    return number


class InstrumentSettings(BaseModel):
    """What the beamline knows: detector, motors, geometry."""

    model_config = _STRICT

    stream: str = "primary"
    """Event stream carrying the frames and stage readbacks; other streams (a baseline that
    also reads the stage, say) are ignored, so their seq_nums never pair with frames."""
    detector_key: str = "det_image"
    """Event data key holding the diffraction frame."""
    x_motor: str = "sx"
    """Event data key of the horizontal sample-stage readback."""
    y_motor: str = "sy"
    """Event data key of the vertical sample-stage readback."""
    motor_units_m: float = Field(1e-6, gt=0)
    """Metres per motor unit (1e-6 when the motors are in micrometres)."""
    position_stream: str | None = None
    """Event stream carrying the stage positions when they are not in ``stream`` (e.g. a fly
    scan's position array published as event pages), with one row per frame; None: the same
    stream as the frames. Frames and positions are paired by seq_num, which counts from 1 in
    each stream (so a monitor stream, one row per value change, does not fit)."""
    swap_axes: bool = False
    """The stage's x moves the sample along the detector's y (and y along x)."""
    x_sign: Literal[1, -1] = 1
    """-1 when the stage's x axis points against the detector's x (applied after the swap)."""
    y_sign: Literal[1, -1] = 1
    """-1 when the stage's y axis points against the detector's y (applied after the swap)."""
    rotation_deg: float = 0.0
    """Rotation in degrees of the stage axes relative to the detector's, counter-clockwise from
    x towards y (applied last)."""
    orientation: Literal["check", "auto", "off"] = "check"
    """Whether the positions' axes are checked against the first frames before the passes
    (:mod:`ptystream.engine.orientation`: the eight sign and swap choices, each scored by a
    short trial): ``check`` says so (log, ``warnings`` in Tiled, the dashboard) when another
    choice fits clearly better, naming the values of ``swap_axes``, ``y_sign`` and ``x_sign``
    to set; ``auto`` also uses it; ``off`` skips the check. In far field a flip of both signs
    gives the twin image, which the data cannot tell apart: never suggested."""
    energy_eV: float = Field(gt=0)
    """Photon energy in eV. A profile may give ``wavelength_m`` (metres) instead, the natural
    unit for visible light; it is converted to this field when the profile is read, and both
    may be given if they agree to 1e-6."""
    distance_m: float = Field(gt=0)
    """Sample-to-detector distance in metres."""
    propagation: Literal["far_field", "fresnel", "near_field"] = FAR_FIELD
    """``far_field``: Fraunhofer, one FFT; ``fresnel``: far field at a finite distance, the
    Fresnel phase over the probe window folded into the probe (matters when pi lambda z /
    (4 dx^2) is not small, e.g. visible light at centimetres); ``near_field``: angular spectrum
    over the propagation distance."""
    focus_to_sample_m: float | None = Field(None, gt=0)
    """Near field in a divergent beam: focus-to-sample distance in metres (from the beamline, not
    in the data), for the Fresnel scaling theorem; None for a plane wave."""
    detector_pixel_size_m: float = Field(gt=0)
    """Detector pixel pitch in metres."""
    frame_px: int | None = Field(None, gt=0)
    """Side of the detector's (square) frames in pixels, needed only by a simulated instrument
    (``sim``), whose detector it sizes. For real data leave it out: the frame size the engine
    reconstructs comes from the detector's frames and ``preprocess`` (``size_px``, ``bin``);
    if given, frames of another size are rejected as ``wrong shape``."""
    read_noise_counts: float | None = Field(None, ge=0)
    """Gaussian read-noise sigma in counts, which enters the variance-stabilised loss; None
    (the default): estimated from the first frames (:mod:`ptystream.engine.noise`). Fix it
    only when the detector's is known (0 for a photon counter)."""
    saturation_counts: float | None = Field(None, gt=0)
    """Counts at which a pixel saturates; None when the detector does not saturate."""
    probe_defocus_m: float = 0.0
    """Nominal focus-to-sample distance in metres, used to build the initial probe."""

    @model_validator(mode="before")
    @classmethod
    def _energy_from_wavelength(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "wavelength_m" not in data:
            return data
        data = dict(data)
        wavelength = _positive_number(data.pop("wavelength_m"), "wavelength_m")
        energy = HC_EV_M / wavelength
        if data.get("energy_eV") is None:
            data["energy_eV"] = energy
        elif not math.isclose(
            _positive_number(data["energy_eV"], "energy_eV"), energy, rel_tol=1e-6
        ):
            raise ValueError(
                f"energy_eV ({data['energy_eV']}) and wavelength_m ({wavelength}) disagree "
                f"({wavelength} m is {energy:.6g} eV); give one of them"
            )
        return data

    @property
    def wavelength_m(self) -> float:
        """Wavelength in metres, from ``energy_eV``."""
        return HC_EV_M / self.energy_eV

    def positions_m(self, y_readback: ArrayLike, x_readback: ArrayLike) -> np.ndarray:
        """Stage readbacks (motor units; scalars or arrays) to probe positions ``(..., 2)``
        ``(y, x)`` in metres on the detector's axes: units, then swap, signs and rotation.

        This is the one place where positions from documents change units or axes.
        """
        y = np.asarray(y_readback, dtype=np.float64) * self.motor_units_m
        x = np.asarray(x_readback, dtype=np.float64) * self.motor_units_m
        if self.swap_axes:
            y, x = x, y
        y, x = self.y_sign * y, self.x_sign * x
        if self.rotation_deg:
            theta = math.radians(self.rotation_deg)
            c, s = math.cos(theta), math.sin(theta)
            y, x = s * x + c * y, c * x - s * y
        return np.stack([y, x], axis=-1)

    def geometry(self, frame_px: int | None = None, *, binning: int = 1) -> Geometry:
        """The geometry of frames ``frame_px`` square (default: the profile's ``frame_px``)
        made of ``binning`` x ``binning`` detector pixels each."""
        frame_px = frame_px or self.frame_px
        if frame_px is None:
            raise ValueError(
                "the frame size is not known yet: it comes from the detector's frames "
                "(instrument.frame_px is not set)"
            )
        return Geometry(
            wavelength_m=self.wavelength_m,
            distance_m=self.distance_m,
            detector_pixel_size_m=self.detector_pixel_size_m * binning,
            frame_px=frame_px,
            propagation=self.propagation,
            focus_to_sample_m=self.focus_to_sample_m,
        )


class LossKind(StrEnum):
    AUTO = "auto"
    """Chosen from the data's noise model, estimated from the first frames
    (:func:`ptystream.engine.noise.recommend_loss`): ``poisson`` for photon counts without read
    noise, ``amplitude`` for everything else."""
    AMPLITUDE = "amplitude"
    """Variance-stabilised amplitude misfit (generalised Anscombe): robust to Poisson and read
    noise."""
    INTENSITY = "intensity"
    """Mean squared intensity error, as in the TensorFlow AD ptychography paper; needs a smaller
    learning rate on noisy data."""
    POISSON = "poisson"
    """Poisson deviance (negative log-likelihood up to a constant), for photon-counting data;
    negative counts are clipped to zero, which biases it where read noise is large."""


class SliceRegulariser(StrEnum):
    """Regularisation of a multislice object along the beam (z)."""

    NONE = "none"
    ARCTAN = "arctan"
    """The PtychoShelves filter: the slices' 3-D spectrum is weighted by ``1 - (2/pi) arctan((b
    kz / kr)^2)``, damping the structure along z that the limited angular range of a
    ptychography scan cannot resolve (it leaks between slices as cross-talk), while keeping
    in-plane detail. Use when the layers are distinct but cross-talk appears."""
    GAUSSIAN = "gaussian"
    """A Gaussian blur across neighbouring slices (``slice_regulariser_strength`` is its sigma in
    slices). Use for a continuous thick sample (no distinct layers) that should vary smoothly in
    z; it mixes distinct layers, so do not use it for those."""


class Algorithm(StrEnum):
    """Reconstruction algorithm: the AD engine, or a classical baseline (numpy)."""

    AD = "ad"
    EPIE = "epie"
    MPIE = "mpie"


class PieSettings(BaseModel):
    """The ePIE and mPIE baselines (Maiden, Johnson and Li, Optica 4, 736 (2017)).

    ePIE uses the two steps only (classically both 1; its denominators are ``max|P|^2`` and
    ``max|O|^2``). The mPIE defaults were measured on the test scans (the demo scan shrunk to 90
    points; noisy: 1e6 photons per frame, about 500 counts at the mean pattern's peak, read
    noise 10 counts): with them mPIE stayed stable over 300 passes of the noisy scan (|C| 0.995,
    ePIE 0.996) and converged faster than ePIE on the clean one (phase r after 10 passes 0.991
    against 0.979). Each momentum step also holds the probe at its initial power: without that
    constraint the loss of every mPIE setting tried on the noisy scan rose or diverged within 30
    to 600 passes (at these defaults within 150), as ENGINE_NOTES found; ePIE held for 600.
    """

    model_config = _STRICT

    object_step: float = Field(1.0, gt=0)
    """Object update step (beta_O; ePIE's alpha, classically 1)."""
    probe_step: float = Field(1.0, gt=0)
    """Probe update step (beta_P; ePIE's beta, classically 1)."""
    object_alpha: float = Field(0.5, gt=0, le=1)
    """mPIE: rPIE regularisation of the object update, whose denominator is ``(1 - alpha)|P|^2 +
    alpha max|P|^2`` (1 gives ePIE's ``max|P|^2``): smaller values step further where the probe
    is weak. Measured with both alphas equal: on clean data phase r after 10 passes 0.981 at 1,
    0.991 at 0.5, 0.994 at 0.25 but 0.35 at 0.1; on noisy data more noise is fitted as they
    fall (|C| after 60 passes 0.996 at 1, 0.9955 at 0.5, 0.993 at 0.25, 0.98 at 0.1)."""
    probe_alpha: float = Field(0.5, gt=0, le=1)
    """mPIE: rPIE regularisation of the probe update (as ``object_alpha``, with the object)."""
    momentum: float = Field(0.5, ge=0, lt=1)
    """mPIE: momentum friction eta, in ``v = eta v + (X - X_T)``, ``X += eta v``; 0 gives rPIE
    (still with the probe power constraint). 0.7 measured the same as 0.5 on the test scans;
    0.5 leaves more margin."""
    momentum_every: int = Field(0, ge=0)
    """mPIE: position updates between momentum steps (T); 0 means once per pass over the
    frames seen. Every 20 updates fitted more noise (|C| 0.994 on the noisy test scan)."""


class EngineSettings(BaseModel):
    """How the engine reconstructs."""

    model_config = _STRICT

    algorithm: Algorithm = Algorithm.AD
    """``ad`` (the streaming AD engine) or a baseline, ``epie`` or ``mpie``."""
    probe_modes: int = Field(1, ge=1, le=16)
    """Mutually incoherent probe modes (partial coherence); 1 is a fully coherent probe."""

    loss: LossKind = LossKind.AUTO
    """Misfit between measured and predicted intensities."""
    batch_size: int = Field(16, gt=0)
    """Frames per optimiser step (a fixed shape, padded with a validity mask)."""
    object_learning_rate: float = Field(0.1, gt=0)
    """Adam learning rate of the object's real and imaginary parts (data normalised to max 1)."""
    tv_weight: float = Field(3e-4, ge=0)
    """Weight of the object's total variation (on the patches of each batch) against noise
    over-fitting, for frames with ``tv_reference_photons`` photons at their maximum; 0
    disables it. Relative to the data loss, whose scale depends on ``loss``: the default suits
    ``amplitude``. AD engine: the weight used is this times the square root of
    ``tv_reference_photons`` over the photons at the first frames' maximum, at most 10 times
    and, in the near field or with several slices, at least once: tied to the noise (7.8e-4 at
    73 photons, 3e-4 at 500, and in the far field 2.1e-5 at 1e5), so that one setting serves;
    twice that with the Poisson loss, whose misfit is twice as stiff at a fit.
    The probe's power is held once per pass (the object and probe trade a factor the data
    cannot see, and the total variation pulled the object down along it until the fit blew
    up). Measured with it on benchmarks/robustness.py's far-field scans over 300 s: at 500
    counts peak (read noise 10) 3e-4 reached |C| 0.986 in 25 s and ended 0.0001 below its best
    (0.987), where 1e-3 held at 0.974; at 50 counts peak 6.8e-4 rose without falling to 0.867,
    where 2e-3, 5e-3 and 1e-2 peaked at 0.802, 0.753 and 0.741 and then fell by 0.02-0.03.
    With ``slices`` S > 1 each slice's windows get the whole weight (the term is summed over
    the slices): on benchmarks/multislice.py's three-layer scan (500 counts) 3e-4 on each slice
    gave per-layer |C| 0.886 / 0.878 / 0.948 in 60 s, the weight over S (1e-4 on each)
    0.727 / 0.839 / 0.889 and 5e-4 on each 0.873 / 0.840 / 0.917; on two layers 3e-4 on each
    gave 0.938 / 0.947 and 1.5e-4 0.938 / 0.937."""
    tv_reference_photons: float = Field(500.0, ge=0)
    """AD engine: the photons at the frames' maximum that ``tv_weight`` is set for; the weight
    scales with the square root of this over the frames' (fewer photons, more noise, more
    weight); 0: the weight is used as it is, whatever the noise."""
    probe_learning_rate: float = Field(0.02, ge=0)
    """Adam learning rate of the probe; 0 keeps the probe fixed."""
    probe_start_step: int = Field(0, ge=0)
    """Optimiser steps before the probe starts to move."""
    steps_per_arrival: int = Field(4, gt=0)
    """Optimiser steps after each arrival of new frames (new frames plus a sample of old ones);
    for the ePIE/mPIE baselines a step is one position update, so raise it for them."""
    reuse_probe: bool = False
    """Start each run from the previous run's final probe (same frame size) rather than from
    the optics: a warm start across scans."""
    initial_probe_file: Path | None = None
    """A probe to start from instead of the one built from the optics and the first frames:
    an NPZ with a ``probe`` array, a ptystream result (``OUT.h5`` or ``.cxi``), or a CXI file
    holding ``entry_1/instrument_1/source_1/illumination``; ``(N, N)`` or ``(M, N, N)`` modes of
    the frames' size, rescaled to their power. A relative path is from the working directory
    (for ``reprocess`` on remote Dask workers, give one they can read). Live, a previous run's
    probe (``reuse_probe``) takes its place when there is one."""
    final_epochs: int = Field(30, ge=0)
    """Passes over all frames after the scan stops, before the final result is published."""
    final_learning_rate_fraction: float = Field(0.1, gt=0, le=1)
    """Learning rates decay (cosine) to this fraction of their values over the final passes."""
    held_out_fraction: float = Field(0.0, ge=0, le=0.5)
    """AD engine: share of each frame's detector pixels kept out of the loss the optimiser
    sees (a different set in each frame) and used to measure over-fitting, for the early stop
    (:mod:`ptystream.engine.guard`); 0 (the default for now) fits every pixel, without the
    stop. 0.05 stopped the decline on a scan without TV (|C| 0.963 kept against 0.903 after 150
    passes), but on benchmarks/robustness.py's base case it stopped too early (0.954 against
    0.986 without it), so it is not on by default: the noise-tied ``tv_weight`` is what keeps
    quality from falling with time. On that case over 4000 passes (TV 3e-4) the held-out
    misfit was lowest at pass 48 (|C| 0.963) while |C| rose to 0.986 by pass 300: the pixels
    measure gross over-fitting (their misfit rose 14 % as |C| fell to 0.938) but cannot pick
    the best state at this noise."""
    early_stop_patience: int = Field(10, ge=0)
    """AD engine: a refinement (the final passes, ``reconstruct``, ``reprocess``) ends when the
    held-out misfit has not improved (by 0.1 %) for this many passes, and keeps the pass where
    it was lowest, so quality does not fall with time on noisy data; 0: run every pass."""
    train_distance: bool = False
    """Near field only: fit the propagation distance too (Adam, its own learning rate). A
    polish for a distance known to about a millimetre (on the paper study's scan the gradient
    captured errors of about 1.5 mm, even with the probe known); to find a distance that is
    further off, use ``distance_blur_px`` with a known probe, or ``distance_search_m``. In a
    cone beam this fits the effective distance z1 z2 / (z1 + z2) with the pixel size kept,
    i.e. it corrects the Fresnel number, not the magnification."""
    distance_learning_rate_m: float = Field(1e-5, gt=0)
    """Adam learning rate of the propagation distance, in metres per step."""
    distance_blur_px: float = Field(0.0, ge=0)
    """With ``train_distance``: coarse to fine in z. The loss first compares the predicted and
    measured intensities both blurred by a Gaussian of this sigma (detector pixels), which
    falls linearly to 0 (the plain loss) over ``distance_blur_passes`` passes of z training.
    The blur removes the Fresnel fringes that give the loss local minima in z, so that z is
    found from far off when the probe is known (``initial_probe``, ``probe_learning_rate``
    0): on the paper study's pinhole scan, 8 px over 10 passes took z from 15 mm off to
    0.001 mm in 35 passes (benchmarks/README.md). 0: off. The loss reported while it blurs is
    the blurred one."""
    distance_blur_passes: float = Field(10.0, gt=0)
    """Passes over all frames (steps times ``batch_size`` over the frames) with z trained over
    which ``distance_blur_px`` falls to 0."""
    distance_search_m: tuple[float, float] | None = None
    """Near field, offline (``ptystream reconstruct``): before reconstructing, search this range
    ``(min, max)`` in metres for the distance whose trial reconstruction ends at the lowest loss
    (gradients alone do not move a distance that is far off; see ``engine/distance.py``)."""
    distance_search_passes: int = Field(25, gt=0)
    """Passes over all frames per trial distance of ``distance_search_m``."""
    probe_defocus_search: bool = True
    """Far field: choose the initial probe's defocus from the first frames (a search over
    defocus, each candidate scored by how well it predicts held-out frames;
    ``engine/probe_search.py``) rather than take ``instrument.probe_defocus_m`` as it is, which
    then is one candidate, widens the range searched, and is kept where no trial predicts 5 %
    better than a flat object (the data cannot choose; a warning says so). A nominal defocus
    50 % off or of the wrong sign otherwise stalls the reconstruction. Costs about 1 s once,
    at the first frames (128² frames); skipped for a given probe (``reuse_probe``), for fewer
    than 8 first frames and for a multislice object (``slices`` > 1: the thin-object trials
    find a plane inside it)."""
    probe_defocus_search_m: tuple[float, float] | None = None
    """``(min, max)`` defocus in metres that ``probe_defocus_search`` searches; None: from minus
    to plus the larger of twice the nominal defocus and the defocus at which the beam (its
    convergence angle from the mean pattern) fills the frame."""
    correct_positions: bool = False
    """Fit a correction of each frame's position (needs ``subpixel``); the mean correction is
    kept at zero, since a common shift of all positions only moves the object."""
    position_start_step: int = Field(50, ge=0)
    """Optimiser steps before positions start to move (the object must take shape first)."""
    position_learning_rate_px: float = Field(0.05, gt=0)
    """Adam learning rate of the position corrections, in object pixels per step."""
    position_max_px: float = Field(4.0, gt=0)
    """Largest correction, in object pixels (damping against runaway frames)."""
    subpixel: bool = True
    """Shift the probe by the fractional part of each position (Fourier shift)."""
    jit_compile: bool = True
    """Compile the step with XLA (faster per step; about 2 s to compile per shape)."""
    canvas_margin_px: int = Field(8, ge=0)
    """Object pixels added around the planned scan extent plus one probe."""
    seed: int = 0
    """Seed of the engine's random generator (mini-batch sampling)."""
    tf_threads: int = Field(1, gt=0)
    """TensorFlow intra- and inter-op threads; 1 leaves a core for ingest and publishing."""
    pie: PieSettings = PieSettings()
    """Settings of the ePIE and mPIE baselines (ignored by the AD engine)."""
    slices: int = Field(1, ge=1, le=64)
    """Object slices along the beam (multislice, for samples thicker than the depth of focus,
    about 5.4 dr^2 / lambda for a resolution dr); 1 is a thin object (projection
    approximation). The wave is multiplied by slice 1, propagated by angular spectrum to slice
    2, and so on; the last slice is not propagated."""
    slice_spacing_m: float | list[float] = Field(0.0)
    """Distance between neighbouring slices in metres, along the beam: one value for every gap,
    or one per gap (``slices - 1`` values)."""
    train_slice_spacing: bool = False
    """Fit the slice spacings too (Adam, its own learning rate; needs ``slices`` > 1)."""
    slice_spacing_learning_rate_m: float = Field(1e-7, gt=0)
    """Adam learning rate of the slice spacings, in metres per step."""
    slice_regulariser: SliceRegulariser = SliceRegulariser.NONE
    """Regularisation along z of a multislice object (applied to the whole stack after each pass
    over the frames and every ``steps_per_arrival`` arrivals live)."""
    slice_regulariser_strength: float = Field(1.0, gt=0)
    """``arctan``: the filter's ``b`` (larger damps more of the z structure); ``gaussian``: the
    blur's sigma in slices."""

    @model_validator(mode="after")
    def _slices_consistent(self) -> EngineSettings:
        spacing = self.slice_spacing_m
        values = spacing if isinstance(spacing, list) else [spacing]
        if isinstance(spacing, list) and len(spacing) != self.slices - 1:
            raise ValueError(
                f"engine.slice_spacing_m lists {len(spacing)} spacings, but engine.slices = "
                f"{self.slices} has {self.slices - 1} gaps (give one value per gap, or one "
                "number for all)"
            )
        for value in values:
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(
                    f"engine.slice_spacing_m must be >= 0 metres (along the beam), got {value!r}"
                )
        if self.train_slice_spacing and self.slices < 2:
            raise ValueError("engine.train_slice_spacing needs engine.slices >= 2")
        search = self.probe_defocus_search_m
        if search is not None and not search[0] < search[1]:
            raise ValueError(f"engine.probe_defocus_search_m must be (min, max), got {search}")
        if self.distance_blur_px > 0 and not self.train_distance:
            raise ValueError("engine.distance_blur_px needs engine.train_distance")
        return self

    @property
    def slice_gaps_m(self) -> tuple[float, ...]:
        """The ``slices - 1`` distances between neighbouring slices, metres."""
        spacing = self.slice_spacing_m
        if isinstance(spacing, list):
            return tuple(float(v) for v in spacing)
        return (float(spacing),) * (self.slices - 1)


class PreprocessSettings(BaseModel):
    """Detector pre-processing, applied to every frame before the engine sees it, the same way
    live, offline and in reprocessing (:mod:`ptystream.preprocess`), in this order: dark
    subtraction, flat-field division, bad pixels masked (the mask file, pixels saturated in the
    first frames, and, where asked, hot and dead pixels), the window cut around the pattern's
    centre, binning. The frame size the engine reconstructs is ``size_px / bin`` (or the
    detector's side over ``bin``): never a number to keep in sync with the detector."""

    model_config = _STRICT

    size_px: int | None = Field(None, gt=0)
    """Side in detector pixels of the square window cut from each frame (before binning), a
    multiple of ``bin``; None: the whole detector, whose frames must then be square."""
    centre: Literal["centre_of_mass", "detector"] | tuple[float, float] = "centre_of_mass"
    """Where the window is centred (the pattern's zero frequency): ``centre_of_mass`` of the
    first frames' mean pattern (dark-subtracted, masked), ``detector`` (its middle pixel), or
    ``[y, x]`` in detector pixels (rows, columns from 0)."""
    bin: int = Field(1, ge=1)
    """Detector pixels summed along each axis into one pixel the engine sees: the effective
    pixel is ``bin * instrument.detector_pixel_size_m``, the object pixel (lambda z over the
    window's width) is unchanged and the probe window is ``bin`` times narrower (fewer, larger
    frames: faster, for a probe that fits). A binned pixel with a masked part is masked."""
    dark_file: Path | None = None
    """Dark frames (HDF5, NPY/NPZ or TIFF; a stack is averaged) subtracted from every frame.
    An HDF5 file with more than one dataset names it: ``darks.h5:/entry/data/data``."""
    dark_stream: str | None = None
    """Name of a stream of the same run holding dark frames of the detector (e.g. ``dark``):
    live they come with the run's documents (frames are held until they have, at most
    300 frames); reprocessing reads them from the raw run in Tiled."""
    flat_file: Path | None = None
    """Flat field (same formats): frames are divided by it, normalised to a mean of 1; pixels
    where it is not positive are masked."""
    mask_file: Path | None = None
    """Bad-pixel mask (same formats), the detector's shape: non-zero marks a bad pixel (the CXI
    and Eiger convention)."""
    hot_pixel_sigma: float | None = Field(None, gt=0)
    """Mask pixels brighter than all eight neighbours by more than this many robust standard
    deviations in the first frames' mean (a speckle of oversampled data is wider than one
    pixel, a hot pixel is not); None: no search."""
    dead_pixels: bool = False
    """Mask pixels that read the same value in every one of the first frames where their
    neighbours vary (by a count or more, or collect 15 counts over those frames)."""

    @model_validator(mode="after")
    def _window_bins(self) -> PreprocessSettings:
        if self.size_px is not None and self.size_px % self.bin:
            raise ValueError(
                f"preprocess.size_px ({self.size_px}) must be a multiple of preprocess.bin "
                f"({self.bin})"
            )
        if self.dark_file is not None and self.dark_stream is not None:
            raise ValueError("give one of preprocess.dark_file and preprocess.dark_stream")
        return self

    @property
    def frame_px(self) -> int | None:
        """Side of the frames the engine sees, when the profile fixes it (``size_px``)."""
        return None if self.size_px is None else self.size_px // self.bin


class IngestSettings(BaseModel):
    """How frames get from documents to the engine: files, memory, run endings."""

    model_config = _STRICT

    memory_budget_mb: float = Field(1024.0, gt=0)
    """Frames waiting for the engine (queued, or waiting for their position) are held in memory
    up to this many MiB; beyond it they are appended to a spill file on local disk and read back
    in turn. None is ever dropped."""
    stop_timeout_s: float = Field(1800.0, gt=0)
    """A run that sends no document for this many seconds is closed as ``incomplete`` and
    published (a lost stop document, a crashed RunEngine). Pauses longer than this end the live
    reconstruction too, so set it above the longest expected pause."""
    backfill_after_s: float | None = Field(5.0, gt=0)
    """Where the raw run is in Tiled (bluesky's ``TiledWriter`` saves it), frames the document
    stream lost are read from it: a gap in the seq_nums this many seconds old, during the run,
    and what is still missing at the stop, before the final passes. A run that sends nothing for
    this long is also looked up there: if its stop document is saved, the run is closed from it
    (its own stop was lost). None: neither (frames that never arrived are only named)."""
    file_timeout_s: float = Field(30.0, gt=0)
    """How long after a run's stop a frame may stay unreadable (its file, datum or HDF5 row not
    written yet, or the file still locked by a detector writing without SWMR) before it is
    rejected as ``unreadable``. During the run such frames are retried without a limit and
    without blocking."""
    max_saturated_px: int = Field(0, ge=0)
    """With ``instrument.saturation_counts`` set, pixels at or above it in the first frames are
    masked for the run (:mod:`ptystream.preprocess`), and later frames with more than this many
    other pixels at or above it are rejected as ``saturated`` (a saturated pixel misreports the
    intensity the model fits)."""
    handlers: dict[str, str] = {}
    """Extra ``event_model.Filler`` handlers for Resource/Datum frames, ``SPEC: module:Class``
    (NPY_SEQ and AD_HDF5 are built in)."""
    root_map: dict[str, str] = {}
    """Resource roots as written by the detector, mapped to where this machine sees them
    (``event_model.Filler``'s ``root_map``), e.g. ``{/nsls2/data: /mnt/data}``."""


class PublishSettings(BaseModel):
    """How results reach Tiled."""

    model_config = _STRICT

    cadence_s: float = Field(1.0, gt=0)
    """At most one live publication per this many seconds."""
    retries: int = Field(5, ge=0)
    """Retries of a run's creation and final write before the final is kept on disk."""
    retry_backoff_s: float = Field(0.5, gt=0)
    """First retry delay in seconds; it doubles on each retry, up to 8 s."""
    raw_batch_size: int = Field(50, gt=0)
    """Events per write of bluesky's TiledWriter (the raw scan): larger means fewer, bigger
    writes."""
    checkpoint_cadence_s: float | None = Field(60.0, gt=0)
    """Seconds between checkpoints of the run being reconstructed live (the engine's whole
    state, frames included, written atomically to the spool's ``checkpoints/<run uid>.h5``),
    so that a killed service loses at most this much work; the checkpoint is removed once the
    run's final result is safe (in Tiled, or kept on disk for a later upload). None: only at
    shutdown. Needs a spool directory (``serve`` and the demo have one)."""


class ProbeKind(StrEnum):
    FOCUSED = "focused"
    PINHOLE = "pinhole"


class TrajectoryKind(StrEnum):
    FERMAT = "fermat"
    RINGS = "rings"
    RASTER = "raster"


class SimSettings(BaseModel):
    """The simulated sample, probe, scan and detector (demo and test profiles only)."""

    model_config = _STRICT

    object_px: int = Field(256, gt=0)
    """Side of the square ground-truth object in pixels."""
    amplitude_range: tuple[float, float] = (0.3, 1.0)
    """Minimum and maximum transmission amplitude of the object."""
    phase_range_rad: tuple[float, float] = (-1.2, 1.2)
    """Minimum and maximum phase of the object in radians (of each layer of a thick one)."""
    slices: int = Field(1, ge=1, le=56)
    """Layers of a thick sample along the beam, each from different images
    (:func:`ptystream.sim.thick.thick_sample`), its diffraction computed by multislice; 1 is
    a thin object."""
    slice_spacing_m: float = Field(0.0, ge=0)
    """Distance between neighbouring layers of a thick sample, in metres."""
    probe: ProbeKind = ProbeKind.FOCUSED
    """Focused beam with defocus, or a pinhole propagated to the sample."""
    convergence_semi_angle_rad: float = Field(5e-4, gt=0)
    """Focused probe: semi-angle of the focusing optic's pupil in radians."""
    defocus_m: float = 2e-3
    """Focused probe: focus-to-sample distance in metres (the true one)."""
    pinhole_diameter_m: float = Field(2e-6, gt=0)
    """Pinhole probe: pinhole diameter in metres."""
    pinhole_distance_m: float = Field(1e-3, ge=0)
    """Pinhole probe: pinhole-to-sample distance in metres."""
    trajectory: TrajectoryKind = TrajectoryKind.FERMAT
    """Shape of the scan."""
    n_points: int = Field(100, gt=0)
    """Number of scan points."""
    overlap: float = Field(0.7, ge=0.0, lt=1.0)
    """Linear overlap of neighbouring probe footprints, 1 - step / probe diameter."""
    jitter_fraction: float = Field(0.1, ge=0.0)
    """Raster only: random position error as a fraction of the step."""
    photons_per_frame: float | None = Field(1e6, gt=0)
    """Mean total counts per frame; None for noise-free frames."""
    read_noise_counts: float | None = Field(None, ge=0)
    """Gaussian read-noise sigma of the simulated detector in counts; None: the instrument's
    ``read_noise_counts`` (0 when that is left to be estimated). Here, not in ``instrument``,
    the engine is not told it and estimates it from the frames, as at a beamline."""
    exposure_s: float = Field(0.0, ge=0)
    """Detector exposure per point in seconds (the scan's pace)."""
    seed: int = 0
    """Seed of the simulation's random generator (positions, noise)."""

    @model_validator(mode="after")
    def _ranges_ordered(self) -> SimSettings:
        for name in ("amplitude_range", "phase_range_rad"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"{name} must be (min, max), got {(lo, hi)}")
        if self.amplitude_range[0] < 0:
            raise ValueError("amplitude_range must be non-negative")
        return self


class Profile(BaseModel):
    """A validated instrument profile."""

    model_config = _STRICT

    name: str
    """Profile name, recorded in the start document and in published metadata."""
    description: str = ""
    """One line saying what the profile is for (shown by ``ptystream profiles list``)."""
    instrument: InstrumentSettings
    engine: EngineSettings = EngineSettings()
    preprocess: PreprocessSettings = PreprocessSettings()
    ingest: IngestSettings = IngestSettings()
    publish: PublishSettings = PublishSettings()
    sim: SimSettings | None = None
    """Present only for simulated instruments (demo, tests)."""

    @model_validator(mode="after")
    def _object_covers_probe(self) -> Profile:
        if self.sim is not None and self.instrument.frame_px is None:
            raise ValueError("a simulated instrument (sim) needs instrument.frame_px")
        if self.sim is not None and self.sim.object_px < self.instrument.frame_px:
            raise ValueError(
                f"sim.object_px ({self.sim.object_px}) is smaller than instrument.frame_px "
                f"({self.instrument.frame_px})"
            )
        if not math.isfinite(self.instrument.distance_m):
            raise ValueError("instrument.distance_m must be finite")
        if self.sim is not None and self.instrument.propagation == NEAR_FIELD:
            raise ValueError("the simulated beamline (sim) is far-field only")
        if self.engine.correct_positions and not self.engine.subpixel:
            raise ValueError("engine.correct_positions needs engine.subpixel: true")
        if self.engine.train_distance and self.instrument.propagation != NEAR_FIELD:
            raise ValueError("engine.train_distance needs instrument.propagation: near_field")
        if self.engine.distance_search_m and self.instrument.propagation != NEAR_FIELD:
            raise ValueError("engine.distance_search_m needs instrument.propagation: near_field")
        if self.instrument.focus_to_sample_m is not None and (
            self.instrument.propagation != NEAR_FIELD
        ):
            raise ValueError("instrument.focus_to_sample_m applies to the near field only")
        prep, frame_px = self.preprocess, self.instrument.frame_px
        if frame_px is not None and prep.size_px is not None and prep.size_px > frame_px:
            raise ValueError(
                f"preprocess.size_px ({prep.size_px}) is larger than the detector "
                f"(instrument.frame_px: {frame_px})"
            )
        if frame_px is not None and prep.size_px is None and frame_px % prep.bin:
            raise ValueError(
                f"instrument.frame_px ({frame_px}) is not a multiple of preprocess.bin "
                f"({prep.bin}): set preprocess.size_px"
            )
        return self

    @property
    def frame_px(self) -> int | None:
        """Side of the frames the engine sees when the profile alone fixes it (a window size,
        or a simulated detector's side), over the binning; None: known from the frames."""
        prep = self.preprocess
        side = prep.size_px or self.instrument.frame_px
        return None if side is None else side // prep.bin

    def geometry(self) -> Geometry:
        """The geometry the engine reconstructs in, when the profile fixes the frame size
        (:attr:`frame_px`); otherwise :func:`ptystream.preprocess.Preprocessor.geometry` gives
        it once the detector's frames are known."""
        return self.instrument.geometry(self.frame_px, binning=self.preprocess.bin)

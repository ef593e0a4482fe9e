"""Simulated reconstruction problems: frames, positions and the truth, built without a RunEngine.

Three problems the benchmarks and tests share:

- :func:`far_field_problem`: the ENGINE_NOTES test problem (8 keV, 2 m, 75 µm detector pixels,
  a focused probe 1.5 mm out of focus, a jittered snake raster at 60 % overlap, Poisson noise
  scaled to a peak count plus Gaussian read noise), with the camera/moon object sized to the
  scan or any object given;
- :func:`near_field_problem`: the simulation study of Seifert, Bouchet, Loetgering and Mosk,
  OSA Continuum 4, 121 (2021): visible light through a pinhole (or a diffuser), 80 Poisson-disc
  positions, angular-spectrum propagation to the camera (:class:`NearFieldStudy`);
- :func:`profile_problem`: a profile's ``sim`` section, computed as its ophyd detector would
  (same truth, trajectory and detector model).

Each returns a :class:`Problem`. Numpy, scipy and scikit-image only; no bluesky at import
(:func:`profile_problem` imports :mod:`ptystream.sim.scan` when called).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ptystream import optics
from ptystream.config import HC_EV_M, Profile, SimSettings, TrajectoryKind
from ptystream.sim import trajectories
from ptystream.sim.detector import DetectorModel, diffraction_pattern, exit_wave
from ptystream.sim.sample import GroundTruth, make_object
from ptystream.types import Estimate, Geometry, ScanPlan

__all__ = [
    "DEFOCUS_M",
    "DETECTOR_PIXEL_M",
    "DISTANCE_M",
    "ENERGY_EV",
    "NOMINAL_DEFOCUS_M",
    "SEMI_ANGLE_RAD",
    "NearFieldStudy",
    "Problem",
    "diffuser_probe",
    "far_field_problem",
    "near_field_problem",
    "paper_object",
    "poisson_disc_positions",
    "profile_problem",
]

#: The ENGINE_NOTES test problem's instrument: photon energy in eV, sample-to-detector distance
#: and detector pixel in metres, the focused probe's convergence semi-angle in radians and its
#: defocus at the sample in metres.
ENERGY_EV = 8000.0
DISTANCE_M = 2.0
DETECTOR_PIXEL_M = 75e-6
SEMI_ANGLE_RAD = 6e-4
DEFOCUS_M = 1.5e-3
#: The defocus an engine is told (metres): 10 % off the truth, as in the demo profile.
NOMINAL_DEFOCUS_M = 1.1 * DEFOCUS_M


@dataclass
class Problem:
    """A simulated scan: frames (counts, float32; centred diffraction patterns in the far field,
    camera images in the near field) at probe positions ``(n, 2)`` (y, x in metres), and the
    truth they were computed from.

    Attributes
    ----------
    geometry : the true geometry (the near field's true propagation distance).
    truth : object and probe on the object grid.
    positions_m : ``(n, 2)`` probe positions in metres.
    frames : ``(n, N, N)`` float32 counts.
    read_noise_counts : sigma of the Gaussian read noise in counts (what an engine is told;
        None: estimated from the frames).
    probe_defocus_m : the nominal defocus in metres an engine is told (0: none).
    step_px : the raster step in object pixels, where the scan is a raster.
    details : how the problem was built (units in the keys), for reports.
    """

    geometry: Geometry
    truth: GroundTruth
    positions_m: np.ndarray
    frames: np.ndarray
    read_noise_counts: float | None
    probe_defocus_m: float = 0.0
    step_px: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def plan(self) -> ScanPlan:
        """The scan plan of all positions (:meth:`ScanPlan.covering`)."""
        return ScanPlan.covering(self.positions_m)

    def head(self, n: int | None) -> Problem:
        """The same problem with only its first ``n`` frames (all for None)."""
        return dataclasses.replace(self, frames=self.frames[:n], positions_m=self.positions_m[:n])

    def lit_mask(self, estimate: Estimate, fraction: float = 0.3) -> np.ndarray:
        """Pixels of ``estimate``'s canvas where the *true* probe intensity, summed over the
        true positions, exceeds ``fraction`` of its maximum.

        The region ``score_against_truth`` scores, but the same for every estimate of this
        problem, whatever its probe became. Each window is placed at the integer pixel below
        its corner, as the simulation samples the object.
        """
        n = self.geometry.frame_px
        dx = estimate.pixel_size_m
        corner = (self.positions_m - np.asarray(estimate.object_origin_m)) / dx - n / 2
        top_left = np.floor(corner).astype(int)
        intensity = np.abs(self.truth.probe) ** 2
        total = np.zeros(estimate.object.shape[-2:])
        for r, c in top_left:
            total[r : r + n, c : c + n] += intensity
        return total > fraction * total.max()


def far_field_problem(
    frame_px: int = 128,
    n_points: int = 80,
    *,
    passes: int = 1,
    seed: int = 0,
    overlap: float = 0.6,
    jitter_px: float = 3.0,
    peak_counts: float | None = 500.0,
    read_noise_counts: float = 10.0,
    sample: np.ndarray | None = None,
    slice_gaps_m: Sequence[float] | None = None,
    trajectory: TrajectoryKind | str = TrajectoryKind.RASTER,
) -> Problem:
    """The ENGINE_NOTES test problem.

    A near-square snake raster of ``n_points`` at ``overlap`` (linear, of the probe's 90 %-power
    diameter) with uniform jitter of ±``jitter_px`` object pixels, scanned ``passes`` times
    (fresh jitter each pass); far-field frames of ``frame_px``²; Poisson noise scaled so that the
    brightest pixel of the scan expects ``peak_counts``, plus Gaussian read noise of
    ``read_noise_counts``. ``sample``: the complex object (centred on the scan; it must cover
    it), or None for the camera/moon object of :class:`~ptystream.config.SimSettings`, sized to
    the scan plus 4 px. All randomness comes from ``seed`` (positions first, then the noise).
    ``peak_counts`` None: the noise-free intensity times 1e6
    (:class:`~ptystream.sim.detector.DetectorModel`). ``slice_gaps_m`` (metres, None for a thin
    sample): a thick sample of ``len(slice_gaps_m) + 1`` layers (``sample`` ``(S, H, W)``, or
    :func:`~ptystream.sim.thick.thick_sample` by default) diffracting by multislice; use
    :func:`~ptystream.sim.thick.thick_far_field_problem`, which checks the gaps.
    ``trajectory``: ``raster`` (the jittered snake raster above, the default), or ``fermat`` /
    ``rings`` (:func:`~ptystream.sim.trajectories.trajectory` at the same step, no jitter and no
    random draws, so the noise then comes first from ``seed``).
    """
    kind = TrajectoryKind(trajectory)
    rng = np.random.default_rng(seed)
    wavelength = HC_EV_M / ENERGY_EV
    geometry = Geometry(wavelength, DISTANCE_M, DETECTOR_PIXEL_M, frame_px)
    dx = geometry.object_pixel_size_m
    probe = optics.focused_probe(frame_px, dx, wavelength, SEMI_ANGLE_RAD, DEFOCUS_M)
    step_m = trajectories.step_from_overlap(optics.probe_diameter_m(probe, dx), overlap)
    jitter = jitter_px * dx / step_m
    if kind is TrajectoryKind.RASTER:
        positions = np.concatenate(
            [trajectories.jittered_raster(n_points, step_m, jitter, rng) for _ in range(passes)]
        )
    else:
        positions = np.concatenate(
            [trajectories.trajectory(kind, n_points, step_m) for _ in range(passes)]
        )
    if sample is None:
        object_px = 2 * int(np.ceil(np.abs(positions).max() / dx + frame_px / 2 + 4))
        if slice_gaps_m is not None:
            from ptystream.sim.thick import thick_sample

            sample = thick_sample(object_px, len(slice_gaps_m) + 1)
        else:
            settings = SimSettings.model_validate({})  # the defaults
            sample = make_object(object_px, settings.amplitude_range, settings.phase_range_rad)
    origin = -(sample.shape[-1] // 2) * dx
    gaps = tuple(slice_gaps_m or ())
    truth = GroundTruth(sample, probe, dx, (origin, origin), gaps, wavelength)
    frames = np.stack([diffraction_pattern(truth, p).astype(np.float32) for p in positions])
    flux = None if peak_counts is None else peak_counts / float(frames.max())
    detector = DetectorModel(flux, read_noise_counts, None, rng)
    for i in range(len(frames)):  # in place, frame by frame: no float64 copy of the whole scan
        frames[i] = detector.record(frames[i])
    details = {
        "propagation": "far_field",
        "overlap": overlap,
        "jitter_px": jitter_px if kind is TrajectoryKind.RASTER else 0.0,
        "trajectory": kind.value,
        "peak_counts": peak_counts,
        "probe_defocus_m": DEFOCUS_M,
    }
    return Problem(
        geometry,
        truth,
        positions,
        frames,
        read_noise_counts,
        probe_defocus_m=NOMINAL_DEFOCUS_M,
        step_px=step_m / dx if kind is TrajectoryKind.RASTER else None,
        details=details,
    )


def paper_object(
    amplitude_range: tuple[float, float] = (0.3, 1.0),
    phase_range_rad: tuple[float, float] = (-np.pi / 2, np.pi / 2),
) -> np.ndarray:
    """512 x 512 complex64: amplitude from scikit-image's *camera*, phase from *astronaut*
    (grey), each stretched linearly over its range (no phase wrapping).

    Two unrelated images with plenty of structure, so amplitude-phase cross-talk shows in the
    separate correlations; *moon* (:func:`~ptystream.sim.sample.make_object`'s phase) varies by
    only 0.13 rad rms over a scan and leaves a flat object near |C| 0.94.
    """
    from skimage import data
    from skimage.color import rgb2gray

    def unit(image: np.ndarray) -> np.ndarray:
        image = image.astype(np.float64)
        return (image - image.min()) / (image.max() - image.min())

    amplitude = amplitude_range[0] + np.ptp(amplitude_range) * unit(data.camera())
    phase = phase_range_rad[0] + np.ptp(phase_range_rad) * unit(rgb2gray(data.astronaut()))
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def poisson_disc_positions(
    radius_px: float, span_px: float, n: int, seed: int
) -> tuple[np.ndarray, int]:
    """``n`` points ``(n, 2)`` in a ``span_px`` square (pixels), no two closer than
    ``radius_px``, and the seed that drew them.

    ``scipy.stats.qmc.PoissonDisk.fill_space`` fills the square to saturation; the count varies
    with the seed, so seeds from ``seed`` on are tried until a fill holds exactly ``n`` points (a
    subset of a larger fill would leave holes, an unsaturated fill would cluster). RuntimeError
    after 1000 seeds.
    """
    from scipy.stats import qmc

    for s in range(seed, seed + 1000):
        points = qmc.PoissonDisk(2, radius=radius_px / span_px, seed=s).fill_space()
        if len(points) == n:
            return points * span_px, s
    raise RuntimeError(f"no Poisson-disc fill of exactly {n} points in 1000 seeds")


@dataclass(frozen=True)
class NearFieldStudy:
    """The simulation of Seifert et al. (2021) as :func:`near_field_problem` builds it.

    Attributes
    ----------
    wavelength_m : 561 nm light.
    pixel_m : 6.45 µm pixels, at the object and at the camera (plane wave, no magnification).
    frame_px : probe window and camera frame side; the angular spectrum is valid up to
        ``frame_px * pixel_m**2 / wavelength_m`` (:attr:`distance_limit_m`).
    n_positions : probe positions.
    overlap : linear overlap; the Poisson-disc radius is ``(1 - overlap)`` times the probe's
        90 %-power diameter.
    pinhole_diameter_m, pinhole_to_sample_m : a plane wave through this pinhole, propagated
        this far to the sample, is the probe.
    distance_m : true sample-to-camera distance.
    peak_counts : expected counts at the brightest pixel of a unit-transmission object.
    read_noise_counts : sigma of the Gaussian read noise in counts.
    """

    wavelength_m: float = 561e-9
    pixel_m: float = 6.45e-6
    frame_px: int = 256
    n_positions: int = 80
    overlap: float = 0.6
    pinhole_diameter_m: float = 60 * 6.45e-6
    pinhole_to_sample_m: float = 5e-3
    distance_m: float = 3.5e-3
    peak_counts: float = 1500.0
    read_noise_counts: float = 10.0

    @property
    def distance_limit_m(self) -> float:
        """The largest distance the angular spectrum samples correctly, N dx² / λ (metres)."""
        return self.frame_px * self.pixel_m**2 / self.wavelength_m

    def geometry(self, distance_m: float | None = None) -> Geometry:
        """Near-field geometry at ``distance_m`` (default: the true distance)."""
        z = self.distance_m if distance_m is None else distance_m
        return Geometry(self.wavelength_m, z, self.pixel_m, self.frame_px, propagation="near_field")

    def pinhole_probe(self) -> np.ndarray:
        """The plane wave through the pinhole, at the sample."""
        return optics.pinhole_probe(
            self.frame_px,
            self.pixel_m,
            self.wavelength_m,
            self.pinhole_diameter_m,
            self.pinhole_to_sample_m,
        )


def diffuser_probe(probe: np.ndarray, seed: int) -> np.ndarray:
    """``probe`` through a thin diffuser just before the sample: a random phase screen of
    3 rad rms with a correlation length of about 3 px (Gaussian filter of 0.05 cycles/px),
    drawn from ``seed``."""
    n = probe.shape[-1]
    rng = np.random.default_rng(seed)
    f2 = np.fft.fftfreq(n)[:, None] ** 2 + np.fft.fftfreq(n)[None, :] ** 2
    noise = np.fft.fft2(rng.normal(size=(n, n)))
    screen = np.fft.ifft2(noise * np.exp(-f2 / (2 * 0.05**2))).real
    return (probe * np.exp(3j * screen / screen.std())).astype(np.complex64)


def near_field_problem(
    study: NearFieldStudy | None = None, *, seed: int = 0, probe_kind: str = "pinhole"
) -> Problem:
    """The near-field simulation of Seifert et al. (2021), on :func:`paper_object`.

    ``probe_kind``: ``pinhole`` (Fresnel rings at its edge) or ``diffuser``
    (:func:`diffuser_probe` with ``seed + 1``). The probe centres are a Poisson-disc fill
    (:func:`poisson_disc_positions`, from ``seed``) of the square that keeps every window inside
    the object, rounded to whole pixels so that every engine (sub-pixel shifts or not) sees an
    exact forward model. Frames: Poisson counts scaled so that a unit-transmission object peaks
    at ``study.peak_counts``, plus Gaussian read noise (``seed``).

    ``details`` holds ``probe_diameter_px`` (90 % power), ``disc_radius_px``,
    ``poisson_disc_seed`` and ``mean_lit_counts`` (the mean count where the unit-object frame
    exceeds 10 % of its maximum).
    """
    study = study or NearFieldStudy()
    if probe_kind not in ("pinhole", "diffuser"):
        raise ValueError(f"probe_kind must be 'pinhole' or 'diffuser', got {probe_kind!r}")
    dx, wavelength, z, n = study.pixel_m, study.wavelength_m, study.distance_m, study.frame_px
    probe = study.pinhole_probe()
    if probe_kind == "diffuser":
        probe = diffuser_probe(probe, seed + 1)
    sample = paper_object()
    object_px = sample.shape[0]
    diameter_px = optics.probe_diameter_m(probe, dx) / dx
    radius_px = (1 - study.overlap) * diameter_px
    span_px = object_px - n  # probe windows stay inside the object
    centres, used_seed = poisson_disc_positions(radius_px, span_px, study.n_positions, seed)
    centres = np.round(centres + n / 2)
    origin = -(object_px // 2) * dx
    truth = GroundTruth(sample, probe, dx, (origin, origin))
    positions_m = centres * dx + origin
    unit = np.abs(optics.angular_spectrum(probe, dx, wavelength, z)) ** 2
    scale = study.peak_counts / unit.max()
    rng = np.random.default_rng(seed)
    frames = []
    for p in positions_m:
        far = optics.angular_spectrum(exit_wave(truth, p), dx, wavelength, z)
        expected = scale * np.abs(far) ** 2
        counts = rng.poisson(expected) + rng.normal(0.0, study.read_noise_counts, expected.shape)
        frames.append(counts.astype(np.float32))
    stacked = np.stack(frames)
    lit = unit > 0.1 * unit.max()
    details = {
        "propagation": "near_field",
        "probe": probe_kind,
        "probe_diameter_px": diameter_px,
        "disc_radius_px": radius_px,
        "poisson_disc_seed": used_seed,
        "mean_lit_counts": float(stacked[:, lit].mean()),
    }
    return Problem(
        study.geometry(), truth, positions_m, stacked, study.read_noise_counts, details=details
    )


def profile_problem(profile: Profile) -> Problem:
    """``profile``'s simulated scan (its ``sim`` section), computed as its ophyd detector would
    (same truth, trajectory and detector model, the noise drawn from ``sim.seed``), without a
    RunEngine. The engine is told the instrument's read noise and probe defocus."""
    from ptystream.sim.scan import build_simulation, simulated_read_noise

    sim = build_simulation(profile)  # ValueError without a sim section
    inst, settings = profile.instrument, profile.sim
    assert settings is not None
    detector = DetectorModel(
        photons_per_frame=settings.photons_per_frame,
        read_noise_counts=simulated_read_noise(profile) if settings.photons_per_frame else 0.0,
        saturation_counts=inst.saturation_counts,
        rng=np.random.default_rng(settings.seed),
    )
    frames = np.stack(
        [detector.record(diffraction_pattern(sim.truth, tuple(p))) for p in sim.positions_m]
    )
    return Problem(
        inst.geometry(),
        sim.truth,
        np.asarray(sim.positions_m, dtype=float),
        frames,
        inst.read_noise_counts,
        probe_defocus_m=inst.probe_defocus_m,
        details={"propagation": inst.geometry().propagation, "profile": profile.name},
    )

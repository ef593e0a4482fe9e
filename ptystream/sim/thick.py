"""A thick (multislice) sample and its far-field diffraction, computed independently in numpy.

The engine's multislice model is TensorFlow; this module computes the same physics from its
definition, in float64, with :mod:`numpy.fft` only (no :mod:`ptystream.optics` propagation, no
engine code), so that a test comparing the two catches an error in either.

Convention (the engine's): slices ``s = 0 .. S-1`` along the beam, each a complex transmission
on the object grid; the probe is the wave entering slice 0; ``psi_0`` is the probe shifted to
its sub-pixel position, ``psi_{s+1} = AS(psi_s * O_s, gap_s)`` and the exit wave is
``psi_{S-1} * O_{S-1}`` (the last slice is not propagated). ``AS`` is the angular spectrum
(:func:`propagate`); the far-field intensity is ``|fftshift(fft2(exit, norm="ortho"))|**2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ptystream.config import HC_EV_M
from ptystream.sim.problems import (
    DETECTOR_PIXEL_M,
    DISTANCE_M,
    ENERGY_EV,
    Problem,
    far_field_problem,
)
from ptystream.sim.sample import GroundTruth, _normalised_image
from ptystream.types import Geometry

__all__ = [
    "MAX_SLICES",
    "angular_spectrum_kernel",
    "depth_of_focus_m",
    "far_field_intensity",
    "max_gap_m",
    "multislice_exit_wave",
    "propagate",
    "thick_diffraction_pattern",
    "thick_exit_wave",
    "thick_far_field_problem",
    "thick_sample",
]

#: scikit-image images, grey: the amplitudes of layers 0, 1, ... and their phases. Textures
#: (brick, grass, gravel) and photographs, so no two layers look alike.
_AMPLITUDE_IMAGES = ("camera", "coins", "text", "page", "clock", "cell", "moon")
_PHASE_IMAGES = ("astronaut", "brick", "grass", "gravel", "coffee", "chelsea", "rocket")
#: Layers beyond the image pairs reuse them turned and flipped (the 8 symmetries of a square).
MAX_SLICES = 8 * len(_AMPLITUDE_IMAGES)


def depth_of_focus_m(resolution_m: float, wavelength_m: float) -> float:
    """Depth of focus ``5.4 δr² / λ`` (metres) at resolution ``resolution_m``: slices closer than
    this act as one thin object (Tsai et al., Opt. Express 24, 29089 (2016))."""
    return 5.4 * resolution_m**2 / wavelength_m


def max_gap_m(n: int, pixel_size_m: float, wavelength_m: float) -> float:
    """``N dx² / λ`` (metres): the largest distance the angular spectrum samples on an ``n``-pixel
    grid of ``pixel_size_m`` without aliasing its kernel."""
    return n * pixel_size_m**2 / wavelength_m


def angular_spectrum_kernel(
    n: int, pixel_size_m: float, wavelength_m: float, distance_m: float
) -> np.ndarray:
    """The angular-spectrum transfer function ``(n, n)`` complex128, on the *unshifted* frequency
    grid of :func:`numpy.fft.fftfreq` (zero frequency at ``[0, 0]``).

    ``H(f) = exp(2πi z (sqrt(1/λ² - |f|²) - 1/λ))`` for ``|f| < 1/λ``, 0 beyond (evanescent
    waves cut); the constant phase ``2π z / λ`` is left out. The bracket is computed as
    ``-|f|² / (1/λ + sqrt(1/λ² - |f|²))``, which has no cancellation (``1/λ`` is ~1e10 /m for
    hard X-rays). ``distance_m`` in metres, negative to propagate back; 0 gives ones.
    """
    f = np.fft.fftfreq(n, d=pixel_size_m)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    inv = 1.0 / wavelength_m
    arg = inv**2 - f2
    propagating = arg > 0
    root = np.sqrt(np.where(propagating, arg, 0.0))
    bracket = -f2 / (inv + root)
    return np.where(propagating, np.exp(2j * np.pi * distance_m * bracket), 0.0)


def propagate(
    field: np.ndarray, distance_m: float, pixel_size_m: float, wavelength_m: float
) -> np.ndarray:
    """``field`` (..., N, N) propagated ``distance_m`` metres by the angular spectrum
    (:func:`angular_spectrum_kernel`), complex128.

    Valid for ``|distance_m| <=`` :func:`max_gap_m`; the field's frequencies must be in the
    grid's band (any sampled field is), so the kernel's unit modulus conserves its power.
    """
    n = field.shape[-1]
    if field.shape[-2] != n:
        raise ValueError(f"the field must be square, got shape {field.shape}")
    if distance_m == 0:
        return np.asarray(field, dtype=np.complex128).copy()
    kernel = angular_spectrum_kernel(n, pixel_size_m, wavelength_m, distance_m)
    spectrum = np.fft.fft2(np.asarray(field, dtype=np.complex128))
    return np.fft.ifft2(spectrum * kernel)


def multislice_exit_wave(
    patches: np.ndarray,
    probe: np.ndarray,
    gaps_m: Sequence[float],
    pixel_size_m: float,
    wavelength_m: float,
) -> np.ndarray:
    """The wave leaving the last slice, ``(N, N)`` complex128.

    Parameters
    ----------
    patches : ``(S, N, N)`` complex transmissions of the slices in the probe's window, first
        slice (upstream) first.
    probe : ``(N, N)`` the wave entering slice 0, already shifted to its position.
    gaps_m : ``S - 1`` distances in metres from slice ``s`` to slice ``s + 1``.
    pixel_size_m : object pixel in metres.
    wavelength_m : wavelength in metres.
    """
    patches = np.asarray(patches)
    if patches.ndim != 3 or patches.shape[1:] != probe.shape:
        raise ValueError(
            f"patches must be (S, N, N) with (N, N) = {probe.shape}, got {patches.shape}"
        )
    if len(gaps_m) != len(patches) - 1:
        raise ValueError(f"{len(patches)} slices need {len(patches) - 1} gaps, got {len(gaps_m)}")
    psi = np.asarray(probe, dtype=np.complex128)
    for patch, gap in zip(patches[:-1], gaps_m, strict=True):
        psi = propagate(psi * patch, float(gap), pixel_size_m, wavelength_m)
    return psi * patches[-1]


def far_field_intensity(exit_wave: np.ndarray) -> np.ndarray:
    """``|fftshift(fft2(exit_wave, norm="ortho"))|²``: the centred far-field intensity (zero
    frequency at ``[N // 2, N // 2]``), float64; a unit-power exit wave gives unit total."""
    spectrum = np.fft.fft2(np.asarray(exit_wave, dtype=np.complex128), norm="ortho")
    return np.abs(np.fft.fftshift(spectrum, axes=(-2, -1))) ** 2


def _window(truth: GroundTruth, position_m: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The slices' patches ``(S, N, N)`` under a probe centred at ``position_m`` (y, x, metres),
    and the probe Fourier-shifted by the sub-pixel remainder (complex128), exactly as
    :func:`ptystream.sim.detector.exit_wave` places a thin object's window."""
    n = truth.probe.shape[-1]
    centre_px = (np.asarray(position_m) - np.asarray(truth.object_origin_m)) / truth.pixel_size_m
    corner = centre_px - n / 2
    top_left = np.floor(corner).astype(int)
    frac = corner - top_left
    _, h, w = truth.object.shape
    if top_left.min() < 0 or top_left[0] + n > h or top_left[1] + n > w:
        raise ValueError(f"position {position_m} m puts the probe outside the simulated object")
    patches = truth.object[:, top_left[0] : top_left[0] + n, top_left[1] : top_left[1] + n]
    f = np.fft.fftfreq(n)
    ramp = np.exp(-2j * np.pi * (f[:, None] * frac[0] + f[None, :] * frac[1]))
    shifted = np.fft.ifft2(np.fft.fft2(np.asarray(truth.probe, dtype=np.complex128)) * ramp)
    return patches.astype(np.complex128), shifted


def thick_exit_wave(
    truth: GroundTruth, position_m: Sequence[float], gaps_m: Sequence[float], wavelength_m: float
) -> np.ndarray:
    """The exit wave ``(N, N)`` complex128 of a thick ``truth`` (``truth.object`` is
    ``(S, H, W)``) for a probe centred at ``position_m`` (y, x, metres), the slices ``gaps_m``
    apart (``S - 1`` distances in metres): the multislice twin of
    :func:`ptystream.sim.detector.exit_wave`, its window placed the same way."""
    patches, shifted = _window(truth, position_m)
    return multislice_exit_wave(patches, shifted, gaps_m, truth.pixel_size_m, wavelength_m)


def thick_diffraction_pattern(
    truth: GroundTruth, position_m: Sequence[float], gaps_m: Sequence[float], wavelength_m: float
) -> np.ndarray:
    """Noise-free centred far-field intensity (float64) of :func:`thick_exit_wave`; a unit-power
    probe through a unit-transmission sample gives unit total."""
    return far_field_intensity(thick_exit_wave(truth, position_m, gaps_m, wavelength_m))


def _grey(name: str) -> np.ndarray:
    from skimage import data
    from skimage.color import rgb2gray

    image = getattr(data, name)()
    return rgb2gray(image) if image.ndim == 3 else image


def _symmetry(image: np.ndarray, index: int) -> np.ndarray:
    """``image`` under the ``index``-th (0 to 7) symmetry of the square: 0 is itself, 1-3 turns
    by 90°, 4-7 the mirror image and its turns."""
    return np.rot90(image[:, ::-1] if index >= 4 else image, index % 4)


def thick_sample(
    shape_px: int,
    n_slices: int,
    *,
    amplitude_range: tuple[float, float] = (0.8, 1.0),
    phase_range_rad: tuple[float, float] = (-0.5, 0.5),
) -> np.ndarray:
    """``(n_slices, shape_px, shape_px)`` complex64 transmissions, a different picture per layer.

    Layer ``s`` takes its amplitude from one scikit-image picture and its phase from another
    (the pairs in ``_AMPLITUDE_IMAGES`` / ``_PHASE_IMAGES``), each resized and stretched over
    ``amplitude_range`` and ``phase_range_rad`` (radians) as
    :func:`~ptystream.sim.sample.make_object` does. After the 7 pairs the same pictures return
    rotated and flipped, up to :data:`MAX_SLICES` layers (ValueError beyond). Deterministic.

    The defaults make each layer a weak phase object (transmission 0.8 to 1, ±0.5 rad), as a
    thick sample is for hard X-rays.
    """
    if not 1 <= n_slices <= MAX_SLICES:
        raise ValueError(f"n_slices must be 1 to {MAX_SLICES}, got {n_slices}")
    a0, a1 = amplitude_range
    p0, p1 = phase_range_rad
    pairs = len(_AMPLITUDE_IMAGES)
    layers = []
    for s in range(n_slices):
        amp = _normalised_image(
            _symmetry(_grey(_AMPLITUDE_IMAGES[s % pairs]), s // pairs), shape_px
        )
        phase = _normalised_image(_symmetry(_grey(_PHASE_IMAGES[s % pairs]), s // pairs), shape_px)
        layers.append((a0 + (a1 - a0) * amp) * np.exp(1j * (p0 + (p1 - p0) * phase)))
    return np.stack(layers).astype(np.complex64)


def _gaps(n_slices: int, spacing_m: float | Sequence[float], limit_m: float) -> list[float]:
    """The ``n_slices - 1`` gaps in metres, checked: none negative or beyond ``limit_m``."""
    if isinstance(spacing_m, (int, float)):
        gaps = [float(spacing_m)] * (n_slices - 1)
    else:
        gaps = [float(g) for g in spacing_m]
        if len(gaps) != n_slices - 1:
            raise ValueError(
                f"{n_slices} slices need {n_slices - 1} spacings, got {len(gaps)}: {gaps}"
            )
    bad = [g for g in gaps if not 0.0 <= g <= limit_m]
    if bad:
        raise ValueError(
            f"slice gaps {bad} m are outside [0, N dx²/λ = {limit_m:.4g} m], where the "
            "angular spectrum is valid"
        )
    return gaps


def thick_far_field_problem(
    frame_px: int = 128,
    n_points: int = 80,
    *,
    n_slices: int = 2,
    spacing_m: float | Sequence[float] = 100e-6,
    seed: int = 0,
    overlap: float = 0.6,
    jitter_px: float = 3.0,
    peak_counts: float | None = 500.0,
    read_noise_counts: float = 10.0,
    sample: np.ndarray | None = None,
) -> Problem:
    """The far-field test problem of :func:`~ptystream.sim.problems.far_field_problem` (8 keV,
    2 m, 75 µm detector pixels, focused probe at ``DEFOCUS_M``, jittered raster) on a thick
    sample of ``n_slices`` layers.

    Parameters
    ----------
    frame_px, n_points, seed, overlap, jitter_px, read_noise_counts
        As in :func:`~ptystream.sim.problems.far_field_problem` (one pass); the positions are
        drawn from ``seed`` first, then the noise.
    n_slices : layers along the beam.
    spacing_m : gap in metres between consecutive layers, one for all or ``n_slices - 1`` of
        them; each in ``[0, N dx²/λ]`` (ValueError otherwise).
    peak_counts : expected counts of the scan's brightest pixel (Poisson noise), or None for the
        noise-free intensity times 1e6 (:class:`~ptystream.sim.detector.DetectorModel`).
    sample : ``(n_slices, H, W)`` complex transmissions centred on the scan, or None for
        :func:`thick_sample` sized to the scan plus 4 px.

    Returns
    -------
    Problem
        ``truth.object`` is ``(n_slices, H, W)``; ``details`` holds ``n_slices``,
        ``slice_gaps_m``, ``multislice`` (True), ``depth_of_focus_m`` (``5.4 dx²/λ``) and
        ``max_gap_m`` (``N dx²/λ``) besides far_field_problem's keys.
    """
    wavelength = HC_EV_M / ENERGY_EV
    dx = Geometry(wavelength, DISTANCE_M, DETECTOR_PIXEL_M, frame_px).object_pixel_size_m
    limit = max_gap_m(frame_px, dx, wavelength)
    gaps = _gaps(n_slices, spacing_m, limit)
    if sample is not None and (sample.ndim != 3 or sample.shape[0] != n_slices):
        raise ValueError(
            f"sample must be ({n_slices}, H, W) for {n_slices} slices, got {sample.shape}"
        )
    problem = far_field_problem(
        frame_px,
        n_points,
        seed=seed,
        overlap=overlap,
        jitter_px=jitter_px,
        peak_counts=peak_counts,
        read_noise_counts=read_noise_counts,
        sample=sample,
        slice_gaps_m=gaps,
    )
    problem.details |= {
        "multislice": True,
        "n_slices": n_slices,
        "slice_gaps_m": gaps,
        "depth_of_focus_m": depth_of_focus_m(dx, wavelength),
        "max_gap_m": limit,
    }
    return problem

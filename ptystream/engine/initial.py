"""What every engine takes in and starts from (numpy only): frames and positions, the
detector mask, the initial probe."""

from __future__ import annotations

import numpy as np

from ptystream import optics
from ptystream.types import FRESNEL, NEAR_FIELD, Geometry

__all__ = ["check_detector_mask", "checked_frames", "fresnel_phase", "initial_probe"]


def checked_frames(
    patterns: np.ndarray, positions: np.ndarray, n: int, pixel_size_m: float, unit: str = "m"
) -> tuple[np.ndarray, np.ndarray]:
    """Frames as float32 ``(k, n, n)`` and probe positions as float64 ``(k, 2)`` metres.

    ``positions`` are ``(y, x)`` of the probe's centre, in metres (``unit="m"``) or in object
    pixels of ``pixel_size_m`` from the stage origin (``unit="px"``). Raises ValueError naming
    the problem: a wrong shape, a count mismatch, a non-finite value or an unknown unit.
    """
    if unit not in ("m", "px"):
        raise ValueError(f"position unit must be 'm' or 'px', got {unit!r}")
    patterns = np.asarray(patterns, dtype=np.float32)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    if patterns.ndim != 3 or patterns.shape[1:] != (n, n):
        raise ValueError(f"frames must be (k, {n}, {n}), got {patterns.shape}")
    if len(patterns) != len(positions):
        raise ValueError(f"{len(patterns)} frames but {len(positions)} positions")
    if not (np.isfinite(patterns).all() and np.isfinite(positions).all()):
        raise ValueError("frames and positions must be finite")
    return patterns, positions * pixel_size_m if unit == "px" else positions


def check_detector_mask(mask: np.ndarray | None, frame_shape: tuple[int, int]) -> np.ndarray:
    """The detector mask as a boolean array (True: valid pixel), all valid when None.

    Raises ValueError when its shape is not ``frame_shape`` or it leaves no valid pixel.
    """
    if mask is None:
        return np.ones(frame_shape, bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != frame_shape:
        raise ValueError(f"detector mask is {mask.shape}, frames are {frame_shape}")
    if not mask.any():
        raise ValueError("the detector mask leaves no valid pixel")
    return mask


def initial_probe(
    mean_pattern: np.ndarray,
    geometry: Geometry,
    *,
    probe_defocus_m: float = 0.0,
    given: np.ndarray | None = None,
) -> np.ndarray:
    """The probe an engine starts from: complex64 ``(N, N)``, at the sample.

    ``mean_pattern`` is the mean of the first frames in the data's units, masked pixels filled
    (:func:`ptystream.optics.fill_masked`), centred (far field) or as recorded (near field).

    - ``given`` (a previous scan's probe): kept, rescaled to the measured power.
    - far field: the aperture from the mean pattern plus ``probe_defocus_m``
      (:func:`ptystream.optics.initial_probe_from_patterns`); with ``fresnel`` propagation the
      Fresnel phase the forward model adds is taken off again, so the result is the physical
      probe at the sample.
    - near field: the measured amplitude propagated back over the propagation distance.
    """
    dx = geometry.object_pixel_size_m
    if given is not None:  # keep its shape, match the measured power
        probe = np.array(given, dtype=np.complex64)
        probe *= np.sqrt(mean_pattern.sum() / max(np.sum(np.abs(probe) ** 2), 1e-30))
        return probe
    if geometry.propagation == NEAR_FIELD:
        return optics.angular_spectrum(
            np.sqrt(np.clip(mean_pattern, 0.0, None)),
            dx,
            geometry.wavelength_m,
            -geometry.propagation_distance_m,
        ).astype(np.complex64)
    probe = optics.initial_probe_from_patterns(
        mean_pattern, dx, geometry.wavelength_m, probe_defocus_m
    )
    if geometry.propagation == FRESNEL:
        probe = probe * np.conj(fresnel_phase(geometry))
    return probe.astype(np.complex64)


def fresnel_phase(geometry: Geometry) -> np.ndarray:
    """The Fresnel phase a ``fresnel`` geometry folds into the probe (complex64 ``(N, N)``)."""
    return optics.fresnel_phase(
        geometry.frame_px,
        geometry.object_pixel_size_m,
        geometry.wavelength_m,
        geometry.propagation_distance_m,
    )

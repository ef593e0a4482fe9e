"""What every engine starts from (numpy only): the detector mask and the initial probe."""

from __future__ import annotations

import numpy as np

from ptystream import optics
from ptystream.types import FRESNEL, NEAR_FIELD, Geometry

__all__ = ["check_detector_mask", "fresnel_phase", "initial_probe"]


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

"""Multislice pieces both engines share (numpy only): the angular-spectrum kernel between
slices, the regularisers along z, and the PIE engines' slice stack.

Convention (both engines, and :mod:`ptystream.sim.thick`, which computes it independently):
slices ``s = 0 .. S-1`` along the beam; the probe is the wave entering slice 0; the wave leaving
slice ``s`` is propagated by angular spectrum over gap ``s`` to slice ``s + 1``; the exit wave is
the wave leaving the last slice (not propagated).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ptystream import optics
from ptystream.config import EngineSettings, SliceRegulariser
from ptystream.types import Geometry

__all__ = [
    "SliceStack",
    "angular_spectrum_constants",
    "angular_spectrum_kernel",
    "arctan_weight",
    "gaussian_mixing",
    "max_gap_m",
]

logger = logging.getLogger(__name__)


def max_gap_m(geometry: Geometry) -> float:
    """The longest distance angular-spectrum propagation holds for on ``geometry``'s object
    grid: ``N dx^2 / lambda`` metres (beyond it the kernel aliases)."""
    dx = geometry.object_pixel_size_m
    return geometry.frame_px * dx**2 / geometry.wavelength_m


def angular_spectrum_constants(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """``q`` (1/m, :func:`ptystream.optics.angular_spectrum_phase`) and the propagating band (1
    where a frequency propagates, 0 for evanescent ones), float32 ``(N, N)`` with zero frequency
    at ``[0, 0]``: propagation by ``z`` multiplies the spectrum by ``band * exp(-2 pi i z q)``."""
    n, dx, wavelength = geometry.frame_px, geometry.object_pixel_size_m, geometry.wavelength_m
    q = optics.angular_spectrum_phase(n, dx, wavelength)
    fy, fx = optics.spatial_frequencies(n, dx)
    band = fx**2 + fy**2 < 1.0 / wavelength**2
    return (
        np.fft.ifftshift(q).astype(np.float32),
        np.fft.ifftshift(band).astype(np.float32),
    )


def angular_spectrum_kernel(geometry: Geometry, distance_m: float) -> np.ndarray:
    """The angular-spectrum kernel for ``distance_m`` (complex64 ``(N, N)``, zero frequency at
    ``[0, 0]``; see :func:`angular_spectrum_constants`)."""
    q, band = (a.astype(np.float64) for a in angular_spectrum_constants(geometry))
    return (band * np.exp(-2j * np.pi * distance_m * q)).astype(np.complex64)


def arctan_weight(shape: Sequence[int], b: float) -> np.ndarray:
    """The PtychoShelves filter ``1 - (2/pi) arctan((b |kz| / kr)^2)`` on an ``(S, H, W)``
    spectrum (frequencies in cycles per slice and per pixel, ``kr`` plus ``1e-3 / max(H, W)``),
    float32: 1 at ``kz = 0`` (what is constant along z is kept), falling where the structure
    along z is fine compared with the in-plane structure."""
    s, h, w = shape
    kz = np.fft.fftfreq(s)[:, None, None]
    ky, kx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    kr = np.sqrt(kx**2 + ky**2) + 1e-3 / max(h, w)
    return (1.0 - (2.0 / np.pi) * np.arctan((b * np.abs(kz) / kr) ** 2)).astype(np.float32)


def gaussian_mixing(s: int, sigma: float) -> np.ndarray:
    """``(S, S)`` float32 matrix blurring a stack along z by a Gaussian of ``sigma`` slices,
    each row normalised (so what is constant along z is kept)."""
    z = np.arange(s)
    kernel = np.exp(-0.5 * ((z[:, None] - z[None, :]) / sigma) ** 2)
    return (kernel / kernel.sum(axis=1, keepdims=True)).astype(np.float32)


class SliceStack:
    """A multislice sample's propagation between its slices (the gaps fixed, in metres) and its
    regulariser along z, for the PIE engines."""

    def __init__(self, geometry: Geometry, settings: EngineSettings):
        gaps = settings.slice_gaps_m
        limit = max_gap_m(geometry)
        if max(gaps) > limit:
            logger.warning(
                "slice gaps %s m exceed N dx^2 / lambda = %.3g m: the angular spectrum aliases "
                "(the AD engine clips them there)",
                gaps,
                limit,
            )
        self._kernels = [angular_spectrum_kernel(geometry, z) for z in gaps]
        self._back_kernels = [np.conj(kernel) for kernel in self._kernels]
        self.regulariser = SliceRegulariser(settings.slice_regulariser)
        self._strength = settings.slice_regulariser_strength

    def waves(
        self, patches: np.ndarray, probe: np.ndarray
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The waves entering (``psi_s``) and leaving (``psi_s O_s``) each slice, for the
        slices' windows ``patches`` ``(S, n, n)`` lit by the (shifted) ``probe``: the last
        leaving wave is the exit wave."""
        incident, leaving = [probe], []
        for s, kernel in enumerate(self._kernels):
            leaving.append(incident[s] * patches[s])
            incident.append(_propagated(leaving[s], kernel))
        leaving.append(incident[-1] * patches[-1])
        return incident, leaving

    def back(self, wave: np.ndarray, gap: int) -> np.ndarray:
        """``wave`` (entering slice ``gap + 1``) propagated back over gap ``gap``."""
        return _propagated(wave, self._back_kernels[gap])

    def regularised(self, stack: np.ndarray) -> np.ndarray:
        """``stack`` ``(S, H, W)`` filtered along z (:func:`arctan_weight` or
        :func:`gaussian_mixing`, as the AD engine filters it)."""
        if self.regulariser is SliceRegulariser.ARCTAN:
            weight = arctan_weight(stack.shape, self._strength)
            return np.fft.ifftn(np.fft.fftn(stack) * weight).astype(np.complex64)
        mixing = gaussian_mixing(len(stack), self._strength)
        return np.tensordot(mixing, stack, 1).astype(np.complex64)


def _propagated(wave: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return np.fft.ifft2(np.fft.fft2(wave) * kernel)

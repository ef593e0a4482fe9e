"""Ground truth: a complex object made of two shipped images, and the probe from the optics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptystream import optics
from ptystream.config import ProbeKind, SimSettings
from ptystream.types import Geometry

__all__ = ["GroundTruth", "make_ground_truth", "make_object", "make_probe"]


def _normalised_image(image: np.ndarray, n: int) -> np.ndarray:
    from skimage.transform import resize

    img = resize(image.astype(np.float64), (n, n), anti_aliasing=True)
    lo, hi = img.min(), img.max()
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def make_object(
    n: int, amplitude_range: tuple[float, float], phase_range_rad: tuple[float, float]
) -> np.ndarray:
    """An ``n x n`` complex64 object: amplitude from scikit-image's *camera*, phase from *moon*.

    Two unrelated images, so a reconstruction that leaks amplitude into phase (or back) shows in
    the separate amplitude and phase correlations.
    """
    from skimage import data

    amp = _normalised_image(data.camera(), n)
    phase = _normalised_image(data.moon(), n)
    a0, a1 = amplitude_range
    p0, p1 = phase_range_rad
    return ((a0 + (a1 - a0) * amp) * np.exp(1j * (p0 + (p1 - p0) * phase))).astype(np.complex64)


def siemens_star(
    n: int,
    spokes: int = 36,
    amplitude: tuple[float, float] = (0.85, 1.0),
    phase_rad: float = 1.0,
    rotation_rad: float | None = None,
) -> np.ndarray:
    """An ``n x n`` complex64 Siemens star: ``spokes`` dark wedges (amplitude ``amplitude[0]``,
    phase ``phase_rad``) and as many clear ones (``amplitude[1]``, phase 0) around the centre,
    out to 0.45 ``n``, clear outside; the resolution target of real beamlines. The wedges'
    period shrinks towards the centre (``2 pi r / spokes`` pixels at radius ``r``), so one
    image holds every spatial frequency; edges are anti-aliased over one pixel. The star is
    turned by ``rotation_rad``, by default a quarter of the angle between two edges, so that no
    edge lies along a pixel row or column (such edges put power on the spectrum's axes)."""
    if rotation_rad is None:
        rotation_rad = np.pi / (4 * spokes)
    yy, xx = np.indices((n, n)) - (n - 1) / 2
    radius, angle = np.hypot(yy, xx), np.arctan2(yy, xx) - rotation_rad
    # signed distance in pixels to the nearest wedge edge, across the wedge at this radius
    wave = np.sin(spokes * angle)
    edge_px = wave / np.maximum(
        np.abs(spokes * np.cos(spokes * angle)) / np.maximum(radius, 1), 1e-6
    )
    dark = np.clip(0.5 + edge_px, 0.0, 1.0) * (radius < 0.45 * n)
    a0, a1 = amplitude
    return ((a1 + (a0 - a1) * dark) * np.exp(1j * phase_rad * dark)).astype(np.complex64)


def make_probe(settings: SimSettings, geometry: Geometry) -> np.ndarray:
    """The simulated illumination (unit total intensity) on the object grid."""
    dx = geometry.object_pixel_size_m
    if settings.probe is ProbeKind.FOCUSED:
        return optics.focused_probe(
            geometry.frame_px,
            dx,
            geometry.wavelength_m,
            settings.convergence_semi_angle_rad,
            settings.defocus_m,
        )
    return optics.pinhole_probe(
        geometry.frame_px,
        dx,
        geometry.wavelength_m,
        settings.pinhole_diameter_m,
        settings.pinhole_distance_m,
    )


@dataclass(frozen=True)
class GroundTruth:
    """The simulated sample and probe, in the stage frame.

    ``object_origin_m`` is the stage position ``(y, x)`` in metres of the centre of object pixel
    ``[0, 0]``: a probe at stage position ``p`` is centred on object pixel
    ``(p - object_origin_m) / pixel_size_m``.
    """

    object: np.ndarray
    probe: np.ndarray
    pixel_size_m: float
    object_origin_m: tuple[float, float]
    slice_gaps_m: tuple[float, ...] = ()
    """A thick object ``(S, H, W)``: the ``S - 1`` distances between its layers, metres."""
    wavelength_m: float | None = None
    """The wavelength the layers' multislice diffraction is computed for (thick objects)."""

    @property
    def projected_object(self) -> np.ndarray:
        """The object ``(H, W)``: the product of the layers of a thick object."""
        return np.prod(self.object, axis=0) if self.object.ndim == 3 else self.object

    def aligned_to(self, shape: tuple[int, ...], origin_m: tuple[float, float]) -> np.ndarray:
        """The object (each layer of a thick one) resampled (nearest pixel) onto another grid
        of the same pixel size: ``shape`` is ``(H, W)``, or ``(S, H, W)`` for a thick object.

        Pixels of the other grid that fall outside the ground truth are set to zero.
        """
        out = np.zeros(shape, dtype=np.complex64)
        offset = np.rint(
            (np.asarray(origin_m) - np.asarray(self.object_origin_m)) / self.pixel_size_m
        ).astype(int)
        h, w = self.object.shape[-2:]
        y0, x0 = max(0, -offset[0]), max(0, -offset[1])
        y1 = min(shape[-2], h - offset[0])
        x1 = min(shape[-1], w - offset[1])
        if y1 > y0 and x1 > x0:
            out[..., y0:y1, x0:x1] = self.object[
                ..., y0 + offset[0] : y1 + offset[0], x0 + offset[1] : x1 + offset[1]
            ]
        return out


def make_ground_truth(settings: SimSettings, geometry: Geometry) -> GroundTruth:
    """Object and probe for ``settings``; the object is centred on stage position (0, 0).
    With ``settings.slices`` > 1 the object is thick: ``(S, n, n)`` layers."""
    n = settings.object_px
    dx = geometry.object_pixel_size_m
    origin = -(n // 2) * dx
    probe = make_probe(settings, geometry)
    if settings.slices > 1:
        from ptystream.sim.thick import thick_sample

        layers = thick_sample(
            n,
            settings.slices,
            amplitude_range=settings.amplitude_range,
            phase_range_rad=settings.phase_range_rad,
        )
        gaps = (settings.slice_spacing_m,) * (settings.slices - 1)
        return GroundTruth(layers, probe, dx, (origin, origin), gaps, geometry.wavelength_m)
    obj = make_object(n, settings.amplitude_range, settings.phase_range_rad)
    return GroundTruth(obj, probe, dx, (origin, origin))

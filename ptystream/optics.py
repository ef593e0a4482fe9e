"""Numpy optics shared by the simulator and the engine's initial guess (no TensorFlow).

Conventions: orthonormal, centred FFTs (``norm="ortho"``; zero position and zero frequency both at
index ``[N // 2, N // 2]``); fields are complex64 ``(N, N)``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "fresnel_phase",
    "angular_spectrum",
    "angular_spectrum_kernel",
    "angular_spectrum_phase",
    "defocus_transfer",
    "fft2c",
    "fill_masked",
    "focused_probe",
    "ifft2c",
    "initial_modes",
    "initial_probe_from_patterns",
    "orthogonalise_modes",
    "pinhole_probe",
    "probe_diameter_m",
    "spatial_frequencies",
]


def fft2c(field: np.ndarray) -> np.ndarray:
    """Orthonormal 2-D FFT over the last two axes, centred in both spaces."""
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(field, axes=axes), norm="ortho"), axes=axes)


def ifft2c(spectrum: np.ndarray) -> np.ndarray:
    """Inverse of :func:`fft2c`."""
    axes = (-2, -1)
    return np.fft.fftshift(
        np.fft.ifft2(np.fft.ifftshift(spectrum, axes=axes), norm="ortho"), axes=axes
    )


def spatial_frequencies(n: int, pixel_size_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Centred spatial-frequency grids ``(fy, fx)`` in 1/m for an ``n x n`` field."""
    f = np.fft.fftshift(np.fft.fftfreq(n, d=pixel_size_m))
    return np.meshgrid(f, f, indexing="ij")


def defocus_transfer(
    n: int, pixel_size_m: float, wavelength_m: float, distance_m: float
) -> np.ndarray:
    """Centred paraxial (Fresnel) transfer function for propagating ``distance_m`` downstream."""
    fy, fx = spatial_frequencies(n, pixel_size_m)
    return np.exp(-1j * np.pi * wavelength_m * distance_m * (fx**2 + fy**2))


def angular_spectrum_phase(n: int, pixel_size_m: float, wavelength_m: float) -> np.ndarray:
    """``q`` such that angular-spectrum propagation by ``z`` multiplies the centred spectrum by
    ``exp(-2 pi i z q)``, the constant phase ``2 pi z / lambda`` left out.

    ``q = f^2 / (1/lambda + sqrt(1/lambda^2 - f^2))`` equals ``1/lambda - sqrt(1/lambda^2 -
    f^2)`` without its catastrophic cancellation (``1/lambda`` is ~1e10 /m), so it stays exact
    in float32 too. Evanescent frequencies (none for X-rays on a real grid) get ``q = 0`` and
    are cut by :func:`angular_spectrum`.
    """
    fy, fx = spatial_frequencies(n, pixel_size_m)
    f2 = fx**2 + fy**2
    inv = 1.0 / wavelength_m
    arg = inv**2 - f2
    return np.where(arg > 0, f2 / (inv + np.sqrt(np.maximum(arg, 0.0))), 0.0)


def fresnel_phase(
    n: int, pixel_size_m: float, wavelength_m: float, distance_m: float
) -> np.ndarray:
    """Quadratic phase ``exp(i pi r^2 / (lambda z))`` over an ``n``-pixel window centred on the
    optical axis (``r`` from the window's centre pixel ``n // 2``), complex64.

    Multiplying the exit wave (equivalently the probe, since it does not depend on the object)
    by it before an orthonormal FFT gives the Fresnel far field at a finite distance ``z``, up to
    a phase at the detector that the intensity does not see.
    """
    c = (np.arange(n) - n // 2) * pixel_size_m
    r2 = c[:, None] ** 2 + c[None, :] ** 2
    return np.exp(1j * np.pi * r2 / (wavelength_m * distance_m)).astype(np.complex64)


def angular_spectrum(
    field: np.ndarray, pixel_size_m: float, wavelength_m: float, distance_m: float
) -> np.ndarray:
    """Propagate ``field`` by ``distance_m`` (negative: back) with the angular-spectrum method.

    Valid for ``|distance_m| <= N dx^2 / lambda``; beyond that the kernel aliases.
    """
    kernel = angular_spectrum_kernel(field.shape[-1], pixel_size_m, wavelength_m, distance_m)
    return ifft2c(fft2c(field) * kernel)


def angular_spectrum_kernel(
    n: int, pixel_size_m: float, wavelength_m: float, distance_m: float
) -> np.ndarray:
    """The centred transfer function of :func:`angular_spectrum` for an ``n x n`` field:
    ``exp(-2 pi i z q)`` (:func:`angular_spectrum_phase`), 0 for evanescent frequencies."""
    q = angular_spectrum_phase(n, pixel_size_m, wavelength_m)
    fy, fx = spatial_frequencies(n, pixel_size_m)
    propagating = fx**2 + fy**2 < 1.0 / wavelength_m**2
    return np.where(propagating, np.exp(-2j * np.pi * distance_m * q), 0.0)


def focused_probe(
    n: int,
    pixel_size_m: float,
    wavelength_m: float,
    semi_angle_rad: float,
    defocus_m: float,
) -> np.ndarray:
    """A beam focused by a circular pupil of semi-angle ``semi_angle_rad``, ``defocus_m`` past
    focus.

    Returns the complex64 probe on the sample grid, normalised to unit total intensity.
    """
    fy, fx = spatial_frequencies(n, pixel_size_m)
    cutoff = semi_angle_rad / wavelength_m
    radius = np.hypot(fy, fx) / cutoff
    pupil = np.clip((1.0 - radius) * n / 2.0 + 0.5, 0.0, 1.0)  # anti-aliased edge
    spectrum = pupil * defocus_transfer(n, pixel_size_m, wavelength_m, defocus_m)
    probe = ifft2c(spectrum)
    return (probe / np.sqrt(np.sum(np.abs(probe) ** 2))).astype(np.complex64)


def pinhole_probe(
    n: int,
    pixel_size_m: float,
    wavelength_m: float,
    diameter_m: float,
    distance_m: float,
) -> np.ndarray:
    """A plane wave through a pinhole of ``diameter_m``, propagated ``distance_m`` to the sample.

    Returns the complex64 probe normalised to unit total intensity.
    """
    c = (np.arange(n) - n / 2) * pixel_size_m
    yy, xx = np.meshgrid(c, c, indexing="ij")
    r = np.hypot(yy, xx)
    aperture = np.clip((diameter_m / 2 - r) / pixel_size_m + 0.5, 0.0, 1.0).astype(complex)
    probe = angular_spectrum(aperture, pixel_size_m, wavelength_m, distance_m)
    return (probe / np.sqrt(np.sum(np.abs(probe) ** 2))).astype(np.complex64)


def probe_diameter_m(probe: np.ndarray, pixel_size_m: float, fraction: float = 0.9) -> float:
    """Diameter in metres of the centred disc holding ``fraction`` of the probe's intensity."""
    intensity = np.abs(probe) ** 2
    n = probe.shape[-1]
    total = intensity.sum()
    yy, xx = np.indices(intensity.shape)
    cy = (intensity * yy).sum() / total
    cx = (intensity * xx).sum() / total
    r = np.hypot(yy - cy, xx - cx).ravel()
    order = np.argsort(r)
    cumulative = np.cumsum(intensity.ravel()[order]) / total
    radius_px = r[order][min(np.searchsorted(cumulative, fraction), n * n - 1)]
    return float(2.0 * radius_px * pixel_size_m)


def fill_masked(image: np.ndarray, valid: np.ndarray, sigma_px: float = 2.0) -> np.ndarray:
    """``image`` with the pixels where ``valid`` is False filled from their valid neighbours.

    Normalised convolution with a Gaussian of ``sigma_px``, widened until every hole is reached
    (a beamstop can be wide); valid pixels keep their values.
    """
    valid = valid.astype(bool)
    if valid.all():
        return image
    if not valid.any():
        raise ValueError("the mask leaves no valid pixel")
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.fftfreq(image.shape[1])[None, :]
    weights = valid.astype(float)
    while True:
        kernel = np.exp(-2 * (np.pi * sigma_px) ** 2 * (fy**2 + fx**2))
        num = np.fft.ifft2(np.fft.fft2(np.where(valid, image, 0.0)) * kernel).real
        den = np.fft.ifft2(np.fft.fft2(weights) * kernel).real
        if (den[~valid] > 1e-6).all():
            return np.where(valid, image, num / np.maximum(den, 1e-12))
        sigma_px *= 2


def initial_probe_from_patterns(
    mean_pattern: np.ndarray,
    pixel_size_m: float,
    wavelength_m: float,
    defocus_m: float,
) -> np.ndarray:
    """Initial probe from the optics: aperture from the mean diffraction pattern, plus defocus.

    ``mean_pattern`` is a centred far-field intensity (counts or normalised); the probe keeps its
    total power, so a unit-transmission object reproduces the measured mean intensity.
    """
    n = mean_pattern.shape[-1]
    amplitude = np.sqrt(np.clip(mean_pattern, 0.0, None))
    spectrum = amplitude * defocus_transfer(n, pixel_size_m, wavelength_m, defocus_m)
    return ifft2c(spectrum).astype(np.complex64)


def initial_modes(probe: np.ndarray, n_modes: int, power_fraction: float = 0.1) -> np.ndarray:
    """Mutually incoherent probe modes ``(n_modes, N, N)`` to start a mixed-state fit from.

    Mode 0 is ``probe``; mode k is ``probe`` times the k-th low-order Hermite-like weight
    (x, y, xy, x^2 - c, y^2 - c, ...) in units of the probe's RMS width, so each new mode is
    orthogonal-ish and lives where the beam does. Together the extra modes carry
    ``power_fraction`` of the total power, which stays that of ``probe`` (modes' intensities add).
    """
    n = probe.shape[-1]
    intensity = np.abs(probe) ** 2
    total = max(float(intensity.sum()), 1e-30)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    cy, cx = (intensity * yy).sum() / total, (intensity * xx).sum() / total
    width = np.sqrt((intensity * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum() / total / 2) or 1.0
    y, x = (yy - cy) / width, (xx - cx) / width
    weights = [x, y, x * y, x**2 - 1, y**2 - 1, x**2 * y - y, x * y**2 - x]
    modes = [probe.astype(np.complex128)]
    for k in range(1, n_modes):
        weight = weights[(k - 1) % len(weights)] * (1 + (k - 1) // len(weights))
        modes.append(probe * weight)
    out = np.stack(modes)
    if n_modes > 1:
        extra = np.sum(np.abs(out[1:]) ** 2)
        out[1:] *= np.sqrt(power_fraction * total / max(extra, 1e-30))
        out[0] *= np.sqrt(1 - power_fraction)
    return out.astype(np.complex64)


def orthogonalise_modes(modes: np.ndarray) -> np.ndarray:
    """Probe modes ``(M, N, N)`` re-expressed as orthogonal modes sorted by power.

    Mixed-state ptychography fixes the modes only up to a unitary mixing (the summed intensity is
    the same); the eigenvectors of the modes' Gram matrix are the natural, comparable choice.
    """
    m = modes.shape[0]
    flat = modes.reshape(m, -1).astype(np.complex128)
    gram = flat.conj() @ flat.T
    power, vectors = np.linalg.eigh(gram)
    order = np.argsort(power)[::-1]
    return (vectors[:, order].T @ flat).reshape(modes.shape).astype(np.complex64)

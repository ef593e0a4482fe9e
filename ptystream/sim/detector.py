"""Far-field diffraction of the ground truth, and the detector's noise model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptystream import optics
from ptystream.sim.sample import GroundTruth

__all__ = ["DetectorModel", "RawDetector", "diffraction_pattern", "exit_wave"]


def exit_wave(truth: GroundTruth, position_m: tuple[float, float]) -> np.ndarray:
    """Probe times object for a probe centred at stage position ``position_m`` (y, x) in metres.

    The object patch is taken at the integer pixel and the probe is Fourier-shifted by the
    fractional remainder, the same convention as the engine.
    """
    n = truth.probe.shape[-1]
    centre_px = (np.asarray(position_m) - np.asarray(truth.object_origin_m)) / truth.pixel_size_m
    corner = centre_px - n / 2
    top_left = np.floor(corner).astype(int)
    frac = corner - top_left
    h, w = truth.object.shape
    if top_left.min() < 0 or top_left[0] + n > h or top_left[1] + n > w:
        raise ValueError(f"position {position_m} m puts the probe outside the simulated object")
    patch = truth.object[top_left[0] : top_left[0] + n, top_left[1] : top_left[1] + n]
    f = np.fft.fftfreq(n)
    ramp = np.exp(-2j * np.pi * (f[:, None] * frac[0] + f[None, :] * frac[1]))
    shifted = np.fft.ifft2(np.fft.fft2(truth.probe) * ramp)
    return patch * shifted


def diffraction_pattern(truth: GroundTruth, position_m: tuple[float, float]) -> np.ndarray:
    """Noise-free far-field intensity (centred, float64) for a unit-power probe; a thick
    ``truth`` (layers ``(S, H, W)``) diffracts by multislice
    (:func:`ptystream.sim.thick.thick_diffraction_pattern`)."""
    if truth.object.ndim == 3:
        from ptystream.sim.thick import thick_diffraction_pattern

        if truth.wavelength_m is None:
            raise ValueError("a thick ground truth needs its wavelength_m")
        return thick_diffraction_pattern(truth, position_m, truth.slice_gaps_m, truth.wavelength_m)
    return np.abs(optics.fft2c(exit_wave(truth, position_m))) ** 2


@dataclass
class DetectorModel:
    """Counts recorded by a photon-counting-like detector.

    Attributes
    ----------
    photons_per_frame : expected total counts of a frame from a unit-transmission object; None
        gives the noise-free intensity scaled to that flux of 1e6.
    read_noise_counts : sigma of the additive Gaussian read noise (counts may go negative, as
        after dark subtraction).
    saturation_counts : counts at which a pixel clips; None for no saturation.
    rng : the generator all noise is drawn from.
    """

    photons_per_frame: float | None
    read_noise_counts: float
    saturation_counts: float | None
    rng: np.random.Generator

    def record(self, intensity: np.ndarray) -> np.ndarray:
        """Turn a unit-power intensity into detector counts (float32)."""
        flux = self.photons_per_frame if self.photons_per_frame is not None else 1e6
        expected = intensity * flux
        if self.photons_per_frame is None:
            counts = expected
        else:
            counts = self.rng.poisson(expected).astype(np.float64)
            if self.read_noise_counts > 0:
                counts += self.rng.normal(0.0, self.read_noise_counts, counts.shape)
        if self.saturation_counts is not None:
            counts = np.minimum(counts, self.saturation_counts)
        return counts.astype(np.float32)


@dataclass
class RawDetector:
    """A camera larger than the reconstruction window, as a beamline's is: the window's
    pattern (counts from :class:`DetectorModel`) lands off-centre on it, every pixel adds its
    own dark current and read noise, dead pixels read 0 and hot pixels read high.

    Attributes
    ----------
    shape : the camera's ``(H, W)`` in pixels.
    centre_px : the camera pixel ``(y, x)`` the pattern's zero frequency falls on.
    dark_counts : ``(H, W)`` dark current per pixel and frame (counts).
    dead, hot : ``(H, W)`` bool, the dead and the hot pixels.
    hot_counts : the mean a hot pixel adds to every frame (with its shot noise, so a dark
        subtracted leaves it noisy).
    read_noise_counts : sigma of the Gaussian read noise of every pixel (dark frames too).
    rng : the generator all noise is drawn from.
    """

    shape: tuple[int, int]
    centre_px: tuple[int, int]
    dark_counts: np.ndarray
    dead: np.ndarray
    hot: np.ndarray
    hot_counts: float
    read_noise_counts: float
    rng: np.random.Generator

    @classmethod
    def make(
        cls,
        shape: tuple[int, int],
        centre_px: tuple[int, int],
        *,
        dark_level: float = 100.0,
        dark_spread: float = 10.0,
        n_dead: int = 20,
        n_hot: int = 5,
        hot_counts: float = 5000.0,
        read_noise_counts: float = 2.0,
        rng: np.random.Generator,
    ) -> RawDetector:
        """A camera with a dark current of ``dark_level`` +- ``dark_spread`` counts and
        ``n_dead`` dead and ``n_hot`` hot pixels at random places."""
        dark = rng.normal(dark_level, dark_spread, shape).clip(0)
        picked = rng.choice(shape[0] * shape[1], n_dead + n_hot, replace=False)
        dead, hot = np.zeros(shape, bool), np.zeros(shape, bool)
        dead.flat[picked[:n_dead]] = True
        hot.flat[picked[n_dead:]] = True
        return cls(shape, centre_px, dark, dead, hot, hot_counts, read_noise_counts, rng)

    def record(self, window: np.ndarray) -> np.ndarray:
        """The camera's frame (float32 counts) for the window's counts ``(N, N)`` (zero
        frequency at ``N // 2``); light falling beyond the camera is lost."""
        frame = self.dark()
        n = window.shape[-1]
        y0, x0 = self.centre_px[0] - n // 2, self.centre_px[1] - n // 2
        h, w = self.shape
        ys, xs = slice(max(y0, 0), min(y0 + n, h)), slice(max(x0, 0), min(x0 + n, w))
        frame[ys, xs] += window[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        frame[self.dead] = 0.0
        return frame

    def dark(self) -> np.ndarray:
        """A frame with the shutter closed (float32 counts)."""
        frame = self.dark_counts + self.rng.normal(0.0, self.read_noise_counts, self.shape)
        frame[self.hot] += self.rng.poisson(self.hot_counts, int(self.hot.sum()))
        frame[self.dead] = 0.0
        return frame.astype(np.float32)

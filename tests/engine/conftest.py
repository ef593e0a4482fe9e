"""Fixtures shared by the engine tests: a spoilt detector, and the near-field optics and scan
every engine is tested on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest


@pytest.fixture(scope="session")
def beamstop_and_hot_pixels():
    """``beamstop_and_hot_pixels(frames) -> (mask, bad)``: a 64² detector mask leaving out a
    beamstop and two hot pixels, and ``frames`` with those pixels spoilt (zeros behind the
    beamstop, 1e7 counts in the hot pixels)."""

    def beamstop_and_hot_pixels(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mask = np.ones((64, 64), bool)
        yy, xx = np.indices(mask.shape)
        mask[np.hypot(yy - 32, xx - 32) < 3] = False
        mask[5, 7] = mask[40, 50] = False
        bad = frames.copy()
        bad[:, ~mask] = 0.0
        bad[:, 5, 7] = bad[:, 40, 50] = 1e7
        return mask, bad

    return beamstop_and_hot_pixels


@dataclass(frozen=True)
class NearFieldOptics:
    """The TensorFlow AD paper's optics: visible light, 6.45 um camera pixels; 64 px frames
    keep the angular spectrum valid up to N dx^2 / lambda = 4.7 mm."""

    wavelength_m: float = 561e-9
    pixel_m: float = 6.45e-6
    n: int = 64
    true_z_m: float = 2e-3


@dataclass(frozen=True)
class NearFieldScan:
    optics: NearFieldOptics
    truth: object  # a ptystream.sim.sample.GroundTruth
    positions: np.ndarray
    frames: np.ndarray


@pytest.fixture(scope="session")
def nearfield_optics() -> NearFieldOptics:
    return NearFieldOptics()


@pytest.fixture(scope="module")
def nearfield_scan(nearfield_optics) -> NearFieldScan:
    """Ground truth, 100 jittered raster positions and noise-free near-field frames (a diffuser
    probe, z = ``true_z_m``)."""
    from ptystream import optics
    from ptystream.sim.detector import exit_wave
    from ptystream.sim.sample import GroundTruth, make_object

    nf = nearfield_optics
    n, pixel_m = nf.n, nf.pixel_m
    rng = np.random.default_rng(0)
    obj = make_object(160, (0.3, 1.0), (-1.2, 1.2))
    fy, fx = np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :]
    smooth = np.fft.ifft2(
        np.fft.fft2(rng.normal(size=(n, n))) * np.exp(-(fy**2 + fx**2) / (2 * 0.05**2))
    ).real
    yy, xx = np.indices((n, n))
    aperture = np.clip(26 - np.hypot(yy - n / 2, xx - n / 2), 0, 1)
    probe = (aperture * np.exp(3j * smooth / smooth.std())).astype(np.complex64)  # a diffuser
    truth = GroundTruth(obj, probe, pixel_m, (-80 * pixel_m, -80 * pixel_m))
    grid = np.arange(-4.5, 5) * 9 * pixel_m
    positions = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    positions += rng.uniform(-2, 2, positions.shape) * pixel_m
    frames = np.stack(
        [
            1e4
            * np.abs(
                optics.angular_spectrum(exit_wave(truth, p), pixel_m, nf.wavelength_m, nf.true_z_m)
            )
            ** 2
            for p in positions
        ]
    ).astype(np.float32)
    return NearFieldScan(nf, truth, positions, frames)

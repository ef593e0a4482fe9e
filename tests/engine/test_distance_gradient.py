"""Coarse to fine in z: the propagation distance found by gradient from far off, with the probe
known (``EngineSettings.distance_blur_px``)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from pydantic import ValidationError
from scipy.ndimage import gaussian_filter

from ptystream import optics
from ptystream.config import EngineSettings
from ptystream.engine import EngineSetup, make_engine
from ptystream.engine.model import Detection
from ptystream.sim.detector import exit_wave
from ptystream.sim.sample import GroundTruth, make_object
from ptystream.types import Geometry, ScanPlan

#: The paper study's light and angular-spectrum limit (N dx^2 / lambda = 18.98 mm) on 64 px
#: frames of 12.9 um pixels; a 250 um pinhole 3 mm upstream of the sample.
WAVELENGTH_M, PIXEL_M, N, TRUE_Z_M = 561e-9, 12.9e-6, 64, 3.5e-3
#: 8.5 mm off: the first-pass loss (flat object, true probe) has a local minimum at 8.5 mm.
START_Z_M = 12e-3


@pytest.fixture(scope="module")
def pinhole_scan():
    """The true pinhole probe, 64 jittered raster positions (whole pixels) and noise-free
    frames at ``TRUE_Z_M``."""
    probe = optics.pinhole_probe(N, PIXEL_M, WAVELENGTH_M, 250e-6, 3e-3)
    truth = GroundTruth(
        make_object(160, (0.5, 1.0), (-1.0, 1.0)), probe, PIXEL_M, (-80 * PIXEL_M,) * 2
    )
    rng = np.random.default_rng(0)
    grid = (np.arange(8) - 3.5) * 9 * PIXEL_M
    positions = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    positions += np.round(rng.uniform(-2, 2, positions.shape)) * PIXEL_M
    frames = [
        1e4
        * np.abs(optics.angular_spectrum(exit_wave(truth, p), PIXEL_M, WAVELENGTH_M, TRUE_Z_M)) ** 2
        for p in positions
    ]
    return probe, positions, np.stack(frames).astype(np.float32)


def train_z(scan, passes: int, **settings) -> list[float]:
    """Adam on z (3e-4 m per step) from ``START_Z_M`` with the true probe fixed: |z error| (m)
    after each pass."""
    probe, positions, frames = scan
    geometry = Geometry(WAVELENGTH_M, START_Z_M, PIXEL_M, N, propagation="near_field")
    extent = tuple((positions[:, k].min(), positions[:, k].max()) for k in range(2))
    engine = make_engine(
        EngineSetup(
            geometry,
            EngineSettings(
                train_distance=True,
                distance_learning_rate_m=3e-4,
                probe_learning_rate=0.0,
                subpixel=False,
                tv_weight=0.0,  # clean data: nothing to over-fit, so no regulariser
                held_out_fraction=0.0,  # and no held-out pixels (with them z wanders 0.24 mm)
                **settings,
            ),
            plan=ScanPlan(len(positions), extent),
            initial_probe=probe,
        )
    )
    engine.add_frames(frames, positions)
    errors: list[float] = []
    engine.refine(passes, on_epoch=lambda _i, _loss: errors.append(engine.distance_m - TRUE_Z_M))
    return [abs(e) for e in errors]


def _detection(coarse: bool) -> Detection:
    mask = np.ones((N, N), np.float32)
    mask[3, 5] = 0.0
    return Detection("amplitude", tf.Variable(0.01), mask, 0.0, coarse=coarse)


def test_no_blur_is_the_plain_loss_bit_for_bit():
    """At sigma 0 the coarse-to-fine detection gives exactly the plain loss, eager and under
    XLA; without ``distance_blur_px`` there is no blur at all."""
    rng = np.random.default_rng(1)
    shape = (4, 1, N, N)
    fields = tf.constant((rng.normal(size=shape) + 1j * rng.normal(size=shape)), tf.complex64)
    measured = tf.constant(rng.gamma(2.0, size=(4, N, N)), tf.float32)
    valid = tf.constant([1.0, 1.0, 1.0, 0.0])
    plain, coarse = _detection(False), _detection(True)
    assert plain.blur_px is None and float(coarse.blur_px) == 0.0
    for run in (lambda f: f, lambda f: tf.function(f, jit_compile=True)):
        want = run(lambda: plain(fields, measured, valid, [])[0])().numpy()
        got = run(lambda: coarse(fields, measured, valid, [])[0])().numpy()
        assert got == want
    coarse.blur_px.assign(2.0)
    assert coarse(fields, measured, valid, [])[0].numpy() < 0.5 * want  # the noise averages out


def test_low_pass_is_a_gaussian_of_sigma_pixels():
    """The Fourier-space Gaussian matches a direct (wrapped) Gaussian filter, keeps the total,
    and zeroes masked pixels first."""
    rng = np.random.default_rng(2)
    image = rng.gamma(2.0, size=(N, N)).astype(np.float32)
    detection = _detection(True)
    got = detection.low_pass(tf.constant(image[None]), tf.constant(3.0)).numpy()[0]
    masked = image.copy()
    masked[3, 5] = 0.0
    want = gaussian_filter(masked.astype(np.float64), 3.0, mode="wrap", truncate=8.0)
    np.testing.assert_allclose(got, want, atol=1e-3 * want.max())
    assert got.sum() == pytest.approx(masked.sum(), rel=1e-5)


def test_blur_needs_a_trained_distance():
    with pytest.raises(ValidationError, match="distance_blur_px needs engine.train_distance"):
        EngineSettings(distance_blur_px=2.0)


def test_coarse_to_fine_finds_z_where_the_plain_gradient_sticks(pinhole_scan):
    """From 8.5 mm off (the old capture range is about 1.5 mm): plain Adam on z stops in the
    local minimum near 8 mm (measured 4.55 mm off after 30 passes); with the loss blurred by
    4 px falling to 0 over 10 passes z is found (measured 0.003 mm off) and stays within
    0.1 mm over the last 10 passes."""
    plain = train_z(pinhole_scan, 30)
    coarse = train_z(pinhole_scan, 30, distance_blur_px=4.0, distance_blur_passes=10)
    assert min(plain) > 3e-3
    assert coarse[-1] < 0.05e-3 and max(coarse[-10:]) < 0.1e-3

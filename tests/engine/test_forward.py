"""The engine's forward model against the simulator's, at fractional positions."""

import numpy as np
import pytest
import tensorflow as tf

from ptystream.config import load_profile
from ptystream.engine import forward
from ptystream.sim.detector import diffraction_pattern
from ptystream.sim.sample import make_ground_truth


@pytest.mark.parametrize("position_px", [(0.0, 0.0), (0.3, -0.7), (-2.25, 1.5)])
def test_engine_predicts_what_the_simulated_detector_measures(position_px):
    profile = load_profile("demo")
    geometry = profile.instrument.geometry()
    truth = make_ground_truth(profile.sim, geometry)
    n, dx = geometry.frame_px, truth.pixel_size_m
    position_m = np.asarray(position_px) * dx
    measured = np.fft.ifftshift(diffraction_pattern(truth, tuple(position_m)))

    # the engine's convention: object pixel of the probe's top-left corner, integer + fraction
    corner = (position_m - truth.object_origin_m) / dx - n / 2
    top_left = np.floor(corner).astype(np.int32)
    obj = tf.constant(truth.object)
    patches = forward.extract_patches(obj, tf.constant([top_left], tf.int32), n)
    probes = forward.shifted_probes(
        tf.constant(truth.probe), tf.constant([corner - top_left], tf.float32)
    )
    predicted = forward.farfield_intensity(patches * probes).numpy()[0]
    np.testing.assert_allclose(predicted, measured, rtol=1e-3, atol=1e-6 * measured.max())


def test_amplitude_loss_is_zero_at_the_truth_and_ignores_padding():
    measured = tf.random.uniform((3, 8, 8), 0.0, 1.0, seed=1)
    predicted = tf.concat([measured[:2], measured[2:] + 5.0], axis=0)
    offset = tf.constant(0.01)
    assert float(
        forward.amplitude_loss(predicted, measured, offset, tf.constant([1.0, 1, 0]))
    ) == pytest.approx(0.0, abs=1e-7)
    assert (
        float(forward.amplitude_loss(predicted, measured, offset, tf.constant([1.0, 1, 1]))) > 0.1
    )

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
    pixels = forward.window_pixels(tf.constant([top_left], tf.int32), n)
    patches = tf.gather_nd(obj, pixels)
    probes = forward.shifted_probes(
        tf.constant(truth.probe[None]), tf.constant([corner - top_left], tf.float32)
    )
    fields = forward.farfield(patches[:, None] * probes)
    predicted = forward.incoherent_intensity(fields).numpy()[0]
    np.testing.assert_allclose(predicted, measured, rtol=1e-3, atol=1e-6 * measured.max())


@pytest.mark.parametrize("kind", ["amplitude", "intensity", "poisson"])
def test_each_loss_is_minimal_at_the_truth_and_ignores_padding_and_masked_pixels(kind):
    rng = np.random.default_rng(1)
    measured = tf.constant(rng.uniform(0.1, 1.0, (3, 8, 8)), tf.float32)
    mask = np.ones((8, 8), np.float32)
    mask[2:4, 5] = 0.0  # e.g. hot pixels
    corrupt = measured.numpy().copy()
    corrupt[2] += 5.0  # a padding slot holds anything
    corrupt[:, 2:4, 5] = 1e6  # masked pixels hold anything
    predicted = tf.Variable(measured)
    offset = tf.constant(0.01)
    weights = tf.constant([1.0, 1.0, 0.0])
    with tf.GradientTape() as tape:
        loss = forward.data_loss(
            kind, predicted, tf.constant(corrupt), offset, weights, tf.constant(mask)
        )
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    assert np.abs(tape.gradient(loss, predicted).numpy()).max() < 1e-4  # a minimum
    off = forward.data_loss(
        kind, predicted * 1.2, tf.constant(corrupt), offset, weights, tf.constant(mask)
    )
    assert float(off) > 1e-4


def test_unknown_loss_is_named():
    x = tf.ones((1, 4, 4))
    with pytest.raises(ValueError, match="unknown loss 'l1'"):
        forward.data_loss("l1", x, x, tf.constant(0.0), tf.ones(1), tf.ones((4, 4)))


def test_total_variation_of_flat_and_textured_patches():
    flat = tf.complex(tf.ones((2, 8, 8)), tf.zeros((2, 8, 8)))
    assert float(forward.total_variation(flat, tf.ones(2))) < 1e-5
    ramp = tf.complex(tf.ones((1, 8, 8)), tf.zeros((1, 8, 8))) * tf.cast(
        tf.range(8, dtype=tf.float32)[None, None, :], tf.complex64
    )
    # |d/dx| = 1 everywhere, |d/dy| = 0
    assert float(forward.total_variation(ramp, tf.ones(1))) == pytest.approx(1.0, rel=1e-4)

"""The forward model's stages against numpy references (:mod:`ptystream.sim.thick` computes the
multislice physics independently, in float64), and their gradients."""

import numpy as np
import pytest
import tensorflow as tf

from ptystream.config import HC_EV_M, EngineSettings
from ptystream.engine import forward, model
from ptystream.sim import thick
from ptystream.sim.problems import DETECTOR_PIXEL_M, DISTANCE_M, ENERGY_EV
from ptystream.sim.sample import GroundTruth
from ptystream.types import FAR_FIELD, FRESNEL, NEAR_FIELD, Geometry

N = 64
WAVELENGTH_M = HC_EV_M / ENERGY_EV


def _geometry(propagation: str = FAR_FIELD, distance_m: float = DISTANCE_M) -> Geometry:
    """The far-field test instrument at 64 px (object pixel 65 nm); near field with a 0.1 um
    camera pixel, so that propagating by tens of micrometres changes the images."""
    pixel_m = 1e-7 if propagation == NEAR_FIELD else DETECTOR_PIXEL_M
    return Geometry(WAVELENGTH_M, distance_m, pixel_m, N, propagation=propagation)


def _model(geometry: Geometry, **settings) -> model.ForwardModel:
    dx = geometry.object_pixel_size_m
    return model.build_model(
        geometry,
        EngineSettings(**settings),
        canvas_shape=(2 * N, 2 * N),
        capacity=4,
        n_seen=tf.Variable(4),
        offset=tf.Variable(0.01),
        pixel_mask=np.ones((N, N), np.float32),
        distance_range_m=(1e-3 * dx, N * dx**2 / WAVELENGTH_M),
    )


def _probe(dx: float) -> np.ndarray:
    from ptystream import optics

    return optics.focused_probe(N, dx, WAVELENGTH_M, 6e-4, 1.5e-3).astype(np.complex64)


def _predict(m: model.ForwardModel, probe: np.ndarray, windows, frac) -> np.ndarray:
    """Centred intensity ``(B, N, N)`` the model predicts for windows ``S x (B, N, N)``."""
    m.illumination.probe.parts[0].assign(probe.real[None])
    m.illumination.probe.parts[1].assign(probe.imag[None])
    probes = m.illumination(tf.constant(frac, tf.float32))
    waves = [tf.constant(w, tf.complex64) for w in windows]
    fields = m.propagation(m.sample(probes, waves))
    return np.fft.fftshift(forward.incoherent_intensity(fields).numpy(), axes=(-2, -1))


@pytest.mark.parametrize("gaps_m", [[20e-6], [150e-6], [60e-6, 300e-6]])
def test_multislice_matches_the_independent_numpy_simulation(gaps_m):
    geometry = _geometry()
    dx = geometry.object_pixel_size_m
    slices = thick.thick_sample(2 * N, len(gaps_m) + 1)
    truth = GroundTruth(slices, _probe(dx), dx, (-N * dx, -N * dx))
    position_m = (0.37 * dx, -1.6 * dx)
    expected = thick.thick_diffraction_pattern(truth, position_m, gaps_m, WAVELENGTH_M)

    corner = (np.asarray(position_m) - truth.object_origin_m) / dx - N / 2
    r, c = np.floor(corner).astype(int)
    windows = [s[None, r : r + N, c : c + N] for s in slices]
    m = _model(geometry, slices=len(slices), slice_spacing_m=gaps_m)
    got = _predict(m, truth.probe, windows, [corner - (r, c)])[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-4 * expected.max())
    thin = thick.thick_diffraction_pattern(
        GroundTruth(np.prod(slices, axis=0)[None], truth.probe, dx, truth.object_origin_m),
        position_m,
        [],
        WAVELENGTH_M,
    )
    assert np.abs(got - thin).max() > 50 * np.abs(got - expected).max()  # really thick


def test_one_slice_with_any_spacing_is_the_thin_model():
    geometry = _geometry()
    dx = geometry.object_pixel_size_m
    rng = np.random.default_rng(0)
    window = np.exp(1j * rng.uniform(-1, 1, (2, N, N))).astype(np.complex64)
    frac = [[0.2, 0.7], [0.0, 0.5]]
    thin = _model(geometry)
    assert isinstance(thin.sample, model.ThinObject)
    spaced = _model(geometry, slice_spacing_m=5e-6)
    assert isinstance(spaced.sample, model.ThinObject)
    probe = _probe(dx)
    np.testing.assert_array_equal(
        _predict(thin, probe, [window], frac), _predict(spaced, probe, [window], frac)
    )
    # a transparent last slice at any distance: the far field does not see a propagation
    two = _model(geometry, slices=2, slice_spacing_m=400e-6)
    clear = np.ones_like(window)
    expected = _predict(thin, probe, [window], frac)
    got = _predict(two, probe, [window, clear], frac)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * expected.max())


def test_two_slices_at_zero_spacing_are_their_product():
    geometry = _geometry()
    rng = np.random.default_rng(1)
    a, b = np.exp(1j * rng.uniform(-1, 1, (2, 3, N, N))).astype(np.complex64)
    probe = _probe(geometry.object_pixel_size_m)
    frac = np.zeros((3, 2))
    product = _predict(_model(geometry), probe, [a * b], frac)
    zero = _predict(_model(geometry, slices=2, slice_spacing_m=0.0), probe, [a, b], frac)
    np.testing.assert_allclose(zero, product, rtol=0, atol=1e-5 * product.max())


def test_propagation_conserves_energy():
    geometry = _geometry(NEAR_FIELD, 200e-6)
    m = _model(geometry)
    rng = np.random.default_rng(2)
    wave = tf.constant(rng.normal(size=(2, 1, N, N)) + 1j * rng.normal(size=(2, 1, N, N)))
    wave = tf.cast(wave, tf.complex64)
    energy = float(tf.reduce_sum(tf.abs(wave) ** 2))
    for stage in (m.propagation, model.FarField()):
        assert float(tf.reduce_sum(tf.abs(stage(wave)) ** 2)) == pytest.approx(energy, rel=1e-5)


def test_fresnel_phase_goes_behind_a_multislice_sample():
    """Thin: folded into the probe (cheaper); thick: on the exit wave, where it belongs. For a
    thin sample the two are the same."""
    geometry = _geometry(FRESNEL, 0.05)
    dx = geometry.object_pixel_size_m
    rng = np.random.default_rng(3)
    window = np.exp(1j * rng.uniform(-1, 1, (1, N, N))).astype(np.complex64)
    probe = _probe(dx)
    thin = _predict(_model(geometry), probe, [window], np.zeros((1, 2)))
    clear = np.ones_like(window)
    thick_model = _model(geometry, slices=2, slice_spacing_m=0.0)
    got = _predict(thick_model, probe, [window, clear], np.zeros((1, 2)))
    np.testing.assert_allclose(got, thin, rtol=0, atol=1e-5 * thin.max())


def test_every_trainable_has_a_finite_gradient_and_the_spacing_gradient_is_right():
    """Near field, two modes, three slices: the probe, the position corrections, the slice
    spacings and the distance all get finite, nonzero gradients; the spacings' agrees with
    finite differences of the loss."""
    geometry = _geometry(NEAR_FIELD, 300e-6)
    m = _model(
        geometry,
        slices=3,
        slice_spacing_m=[80e-6, 120e-6],
        train_slice_spacing=True,
        train_distance=True,
        correct_positions=True,
        probe_modes=2,
    )
    rng = np.random.default_rng(4)
    probe = _probe(geometry.object_pixel_size_m)
    m.illumination.probe.parts[0].assign(np.stack([probe.real, 0.3 * probe.imag]))
    m.illumination.probe.parts[1].assign(np.stack([probe.imag, 0.3 * probe.real]))
    m.illumination.shift.parts[0].assign(rng.uniform(-0.5, 0.5, (4, 2)))
    windows = [
        tf.constant(np.exp(1j * rng.uniform(-0.5, 0.5, (2, N, N))), tf.complex64) for _ in range(3)
    ]
    measured = tf.constant(rng.uniform(0.0, 2.0, (2, N, N)), tf.float32)
    valid = tf.ones((2,))
    idx = tf.constant([0, 1])
    top_left = tf.constant([[10, 12], [30, 7]], tf.int32)
    frac = tf.constant([[0.25, 0.5], [0.75, 0.1]], tf.float32)

    def loss() -> tf.Tensor:
        corner, shift = m.place(top_left, frac, idx, tf.constant([2 * N, 2 * N]))
        del corner
        return m.loss(windows, shift, measured, valid)

    trainables = [t for t in m.trainables if t.kind != model.CANVAS]
    assert {t.name for t in trainables} == {"probe", "shift", "slice_spacing", "distance"}
    with tf.GradientTape() as tape:
        tape.watch(windows)
        value = loss()
    parts = [p for t in trainables for p in t.parts]
    grads = tape.gradient(value, [*parts, *windows])
    for g in grads:
        g = tf.convert_to_tensor(g).numpy()
        assert np.isfinite(g).all() and np.abs(g).max() > 0

    g_gaps = grads[[p is m.sample.gaps.parts[0] for p in parts].index(True)].numpy()
    gaps = m.sample.gaps.parts[0]
    start = gaps.numpy().copy()
    step = 2e-5  # the loss is float32: a smaller step drowns in rounding
    for i in range(2):
        moved = start.copy()
        moved[i] += step
        gaps.assign(moved)
        up = float(loss())
        moved[i] -= 2 * step
        gaps.assign(moved)
        down = float(loss())
        gaps.assign(start)
        assert g_gaps[i] == pytest.approx((up - down) / (2 * step), rel=0.05)


def test_slice_regularisers_keep_the_mean_along_z():
    geometry = _geometry()
    rng = np.random.default_rng(5)
    for kind, strength in (("arctan", 3.0), ("gaussian", 50.0)):
        m = _model(
            geometry,
            slices=2,
            slice_spacing_m=1e-4,
            slice_regulariser=kind,
            slice_regulariser_strength=strength,
        )
        values = np.exp(1j * rng.uniform(-1, 1, (2, 2 * N, 2 * N))).astype(np.complex64)
        for canvas, value in zip(m.canvases, values, strict=True):
            canvas.parts[0].assign(value.real)
            canvas.parts[1].assign(value.imag)
        m.sample.regularise()
        after = np.stack([c.value().numpy() for c in m.canvases])
        np.testing.assert_allclose(after.mean(axis=0), values.mean(axis=0), atol=1e-5)
        spread = np.abs(np.diff(values, axis=0)).mean()
        assert np.abs(np.diff(after, axis=0)).mean() < 0.8 * spread


def test_holding_the_probe_power_scales_its_adam_moments_inversely():
    """The object and probe trade a factor the data cannot see; the engine holds the probe's
    power once per pass. The moments scale as the gradient does (inversely), so Adam's next
    step, relative to the probe, is what it would have been."""
    rng = np.random.default_rng(0)
    illumination = model.Illumination(
        2,
        16,
        4,
        tf.Variable(0),
        fresnel=None,
        subpixel=False,
        correct_positions=False,
        max_shift_px=1.0,
    )
    probe = illumination.probe
    for part, adam in zip(probe.parts, probe.adam, strict=True):
        part.assign(rng.normal(size=part.shape).astype(np.float32))
        adam.m.assign(rng.normal(size=part.shape).astype(np.float32))
        adam.v.assign(rng.uniform(0.5, 1.0, size=part.shape).astype(np.float32))
    pairs = zip(probe.parts, probe.adam, strict=True)
    before = [(p.numpy(), a.m.numpy(), a.v.numpy()) for p, a in pairs]
    power = illumination.power
    illumination.hold_power(4.0 * power)
    assert illumination.power == pytest.approx(4.0 * power, rel=1e-5)
    for (value, m, v), part, adam in zip(before, probe.parts, probe.adam, strict=True):
        assert np.allclose(part.numpy(), 2.0 * value, rtol=1e-6)
        assert np.allclose(adam.m.numpy(), m / 2.0, rtol=1e-6)
        assert np.allclose(adam.v.numpy(), v / 4.0, rtol=1e-6)
        step_before, step_after = m / np.sqrt(v), adam.m.numpy() / np.sqrt(adam.v.numpy())
        assert np.allclose(step_after, step_before, rtol=1e-5)
    illumination.hold_power(0.0)  # nothing to hold to: left as it is
    assert illumination.power == pytest.approx(4.0 * power, rel=1e-5)
    for part, adam in zip(probe.parts, probe.adam, strict=True):  # no power to scale
        part.assign(tf.zeros_like(part))
        adam.m.assign(tf.ones_like(adam.m))
    illumination.hold_power(4.0 * power)
    assert illumination.power == 0.0
    assert all(np.all(adam.m.numpy() == 1.0) for adam in probe.adam)

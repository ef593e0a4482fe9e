"""The simulated sample: the object from its settings, the probes, the ground truth on another
grid."""

import numpy as np
import pytest

from ptystream import optics
from ptystream.config import ProbeKind
from ptystream.sim.sample import make_ground_truth, make_object, siemens_star


def test_object_ranges_come_from_the_settings():
    obj = make_object(96, (0.3, 1.0), (-1.2, 1.2))
    assert obj.dtype == np.complex64
    assert np.abs(obj).min() == pytest.approx(0.3, abs=1e-3)
    assert np.abs(obj).max() == pytest.approx(1.0, abs=1e-3)
    assert np.angle(obj).min() == pytest.approx(-1.2, abs=1e-3)
    assert np.angle(obj).max() == pytest.approx(1.2, abs=1e-3)
    # amplitude and phase come from different images
    assert abs(np.corrcoef(np.abs(obj).ravel(), np.angle(obj).ravel())[0, 1]) < 0.5


def test_probes_have_unit_power_and_the_expected_size(profile):
    g = profile.instrument.geometry()
    dx = g.object_pixel_size_m
    focused = make_ground_truth(profile.sim, g).probe
    assert np.sum(np.abs(focused) ** 2) == pytest.approx(1.0, rel=1e-5)
    # defocus spreads the beam: diameter ~ 2 * semi-angle * defocus = 1.8 um
    assert optics.probe_diameter_m(focused, dx) == pytest.approx(1.8e-6, rel=0.2)
    sim = profile.sim.model_copy(
        update={"probe": ProbeKind.PINHOLE, "pinhole_diameter_m": 1.5e-6, "pinhole_distance_m": 0.0}
    )
    pinhole = make_ground_truth(sim, g).probe
    assert np.sum(np.abs(pinhole) ** 2) == pytest.approx(1.0, rel=1e-5)
    assert optics.probe_diameter_m(pinhole, dx) == pytest.approx(1.5e-6 * np.sqrt(0.9), rel=0.1)


def test_aligned_truth_round_trip(truth):
    dx = truth.pixel_size_m
    origin = (truth.object_origin_m[0] + 5 * dx, truth.object_origin_m[1] - 3 * dx)
    out = truth.aligned_to((20, 20), origin)
    np.testing.assert_array_equal(out[:, 3:], truth.object[5:25, 0:17])
    assert not out[:, :3].any()  # outside the ground truth


def test_siemens_star_has_half_dark_wedges_and_no_edge_on_the_axes():
    """Inside the star's disc half the area is dark wedge (amplitude 0.85, phase 1 rad), the
    other half clear (1, 0); outside it is clear. On a circle the phase changes 72 times (36
    spokes). Turned by a quarter of an edge's angle, no edge lies along a row or column: on
    the axes, 100 px out, the pixel is inside a wedge, not on an edge."""
    star = siemens_star(256, spokes=36)
    assert star.shape == (256, 256) and star.dtype == np.complex64
    amp, phase = np.abs(star), np.angle(star)
    assert amp.min() == pytest.approx(0.85, abs=1e-6) and amp.max() == pytest.approx(1.0)
    assert phase.min() == pytest.approx(0.0, abs=1e-6) and phase.max() == pytest.approx(1.0)
    yy, xx = np.indices(star.shape) - 127.5
    radius = np.hypot(yy, xx)
    dark = phase[(radius > 20) & (radius < 110)]
    assert np.mean(dark > 0.5) == pytest.approx(0.5, abs=0.02)
    assert np.all(phase[radius > 0.45 * 256 + 1] == 0)
    # on a circle of radius 100 the phase changes sign 2 x 36 times
    angles = np.linspace(0, 2 * np.pi, 4000, endpoint=False)
    ring = phase[
        np.rint(127.5 + 100 * np.sin(angles)).astype(int),
        np.rint(127.5 + 100 * np.cos(angles)).astype(int),
    ]
    assert np.count_nonzero(np.diff((ring > 0.5).astype(int)) != 0) in (71, 72)
    # no edge along the axes: at 0 and 90 degrees the circle is well inside a wedge
    for y, x in ((128, 228), (228, 128), (128, 27), (27, 128)):
        assert phase[y, x] in (pytest.approx(0.0, abs=0.01), pytest.approx(1.0, abs=0.01))

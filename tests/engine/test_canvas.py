"""The object canvas: the illumination map (summed probe intensity over the windows) against the
plain loop it replaced, in :mod:`ptystream.engine.canvas` and in each engine's estimate."""

import numpy as np
import pytest

from ptystream.config import Algorithm
from ptystream.engine import EngineSetup, make_engine
from ptystream.engine.canvas import summed_windows
from ptystream.sim.scan import build_simulation


def loop(intensity, corners, shape):
    """The straightforward sum, in float64."""
    out = np.zeros(shape, np.float64)
    m, n = intensity.shape
    for r, c in corners:
        out[r : r + m, c : c + n] += intensity
    return out


def assert_matches_loop(got, intensity, corners, shape):
    want = loop(intensity.astype(np.float64), corners, shape)
    assert got.dtype == np.float32 and got.shape == shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * want.max())
    np.testing.assert_array_equal(got == 0, want == 0)  # unlit pixels are exactly 0, lit ones not


@pytest.mark.parametrize(
    ("shape", "window", "count"),
    [
        ((195, 196), (64, 64), 200),  # the demo's canvas
        ((591, 592), (64, 64), 4000),  # the large benchmark case
        ((37, 53), (8, 5), 60),  # odd sizes, not square
        ((64, 64), (64, 64), 3),  # the window is the canvas
    ],
)
@pytest.mark.parametrize("support", ["full", "disc"])
def test_summed_windows_is_the_loop(shape, window, count, support):
    rng = np.random.default_rng(sum(shape) + count)
    (h, w), (m, n) = shape, window
    intensity = rng.random(window).astype(np.float32) ** 4  # a few decades of dynamic range
    if support == "disc":  # zero outside a disc, as an aperture's probe
        y, x = np.ogrid[:m, :n]
        intensity[(y - m / 2) ** 2 + (x - n / 2) ** 2 > (min(m, n) / 3) ** 2] = 0
    corners = np.column_stack(
        [rng.integers(0, h - m + 1, count), rng.integers(0, w - n + 1, count)]
    )
    edges = [[0, 0], [0, w - n], [h - m, 0], [h - m, w - n], [0, 0]]  # corners, one repeated
    corners = np.concatenate([corners, edges])
    assert_matches_loop(summed_windows(intensity, corners, shape), intensity, corners, shape)


def test_windows_on_one_edge_leave_the_rest_of_the_canvas_dark():
    rng = np.random.default_rng(1)
    intensity = rng.random((16, 16)).astype(np.float32)
    corners = np.array([[0, c] for c in range(0, 85, 7)] + [[90 - 16, 3]])
    got = summed_windows(intensity, corners, (90, 100))
    assert_matches_loop(got, intensity, corners, (90, 100))
    assert np.count_nonzero(got[16:74]) == 0


def test_no_windows_and_windows_outside():
    intensity = np.ones((4, 4), np.float32)
    empty = summed_windows(intensity, np.zeros((0, 2), int), (10, 12))
    assert empty.shape == (10, 12) and not empty.any()
    with pytest.raises(ValueError, match="leave the 10 x 12 canvas"):
        summed_windows(intensity, np.array([[0, 0], [7, 2]]), (10, 12))
    with pytest.raises(ValueError, match="leave"):
        summed_windows(intensity, np.array([[-1, 0]]), (10, 12))


@pytest.mark.parametrize("algorithm", ["ad", "epie"])
def test_engine_illumination_is_the_loop(algorithm, small_profile, planned):
    """Each engine's ``estimate().illumination`` is the loop over its own windows (their
    corners read from the engine's state)."""
    profile = small_profile(photons_per_frame=None)
    sim = build_simulation(profile)
    settings = profile.engine.model_copy(
        update={"algorithm": Algorithm(algorithm), "jit_compile": False}
    )
    engine = make_engine(
        EngineSetup(profile.instrument.geometry(), settings, plan=planned(sim.positions_m))
    )
    n_px = profile.instrument.frame_px
    frames = np.ones((len(sim.positions_m), n_px, n_px), np.float32)
    engine.add_frames(frames, sim.positions_m)
    est = engine.estimate()
    n = engine.n_frames
    state = engine.snapshot().arrays
    if algorithm == "ad":
        corners = state["top_left"][:n] + state["frac"][:n]
        corners = np.floor(corners + state["shift"][:n]).astype(int)
    else:
        corners = state["top_left"][:n]
    intensity = np.abs(est.probe) ** 2
    assert_matches_loop(est.illumination, intensity, corners, est.object.shape)

"""The AD engine driven directly (no Bluesky, no Tiled), as reprocessing and notebooks use it."""

import numpy as np
import pytest

from ptystream.demo import score_against_truth
from ptystream.engine import make_engine
from ptystream.sim.detector import diffraction_pattern
from ptystream.sim.plans import scan_metadata
from ptystream.sim.scan import build_simulation
from ptystream.types import ScanPlan
from tests.conftest import small_profile


@pytest.fixture(scope="module")
def clean_scan():
    """A noise-free simulated scan: profile, simulation and its frames (counts)."""
    profile = small_profile(photons_per_frame=None)
    sim = build_simulation(profile)
    frames = np.stack([1e6 * diffraction_pattern(sim.truth, p) for p in sim.positions_m])
    return profile, sim, frames.astype(np.float32)


def engine_for(profile, plan):
    return make_engine(
        profile.instrument.geometry(),
        profile.engine,
        plan=plan,
        probe_defocus_m=profile.instrument.probe_defocus_m,
    )


def planned(positions):
    md = scan_metadata(positions, "test")
    return ScanPlan(md["n_points"], tuple(tuple(e) for e in md["extent_m"]))


def test_streaming_reconstruction_of_a_clean_scan(clean_scan):
    profile, sim, frames = clean_scan
    engine = engine_for(profile, planned(sim.positions_m))
    engine.warm_up()
    for i in range(0, len(frames), 5):  # frames arrive in small chunks, as during a scan
        engine.add_frames(frames[i : i + 5], sim.positions_m[i : i + 5])
        engine.step(4)
    streamed, _ = score_against_truth(engine.estimate(), sim.truth)
    engine.refine(60)
    est = engine.estimate(final=True)
    score, flat = score_against_truth(est, sim.truth)
    assert est.n_frames == len(frames) and est.final
    assert score.abs_c >= 0.99 and score.abs_c > flat + 0.04
    assert score.amplitude >= 0.98 and score.phase >= 0.9
    assert score.abs_c >= streamed.abs_c - 1e-3  # refining after the scan does not hurt
    assert est.loss[-1, 1] < 0.1 * est.loss[0, 1]


def test_growing_the_canvas_keeps_object_and_optimiser_state(clean_scan):
    """An engine that must grow its canvas follows the same trajectory as one planned big.

    If growth lost or misplaced the Adam moments or the per-pixel step counts, the two engines
    would part ways on the next steps.
    """
    profile, sim, frames = clean_scan
    settings = profile.engine.model_copy(update={"jit_compile": False})
    geometry = profile.instrument.geometry()
    centre = np.argsort(np.abs(sim.positions_m).max(axis=1))
    first, rest = centre[:20], centre[20:]
    engines = [
        make_engine(geometry, settings, plan=plan)
        for plan in (planned(sim.positions_m), planned(sim.positions_m[first]))
    ]
    for engine in engines:
        engine.add_frames(frames[first], sim.positions_m[first])
        engine.step(30)
        engine.add_frames(frames[rest], sim.positions_m[rest])  # the second must grow
        engine.step(10)
    big, grown = (engine.estimate() for engine in engines)
    assert grown.object.shape[0] > planned_shape(engines[1], first, sim)[0]
    offset = np.rint(
        (np.array(big.object_origin_m) - grown.object_origin_m) / grown.pixel_size_m
    ).astype(int)
    h, w = big.object.shape
    region = grown.object[offset[0] : offset[0] + h, offset[1] : offset[1] + w]
    lit = big.illumination > 1e-3 * big.illumination.max()
    np.testing.assert_allclose(region[lit], big.object[lit], atol=2e-4)
    np.testing.assert_allclose(grown.probe, big.probe, atol=2e-4)


def planned_shape(engine, chosen, sim):
    """Canvas shape the engine would plan for the positions ``chosen`` alone."""
    return engine._canvas_for(
        sim.positions_m[chosen].min(axis=0), sim.positions_m[chosen].max(axis=0)
    ).shape


def test_unplanned_scan_reconstructs(clean_scan):
    profile, sim, frames = clean_scan
    engine = engine_for(profile, ScanPlan())  # nothing known in advance
    for i in range(0, len(frames), 10):
        engine.add_frames(frames[i : i + 10], sim.positions_m[i : i + 10])
        engine.step(4)
    engine.refine(60)
    score, _ = score_against_truth(engine.estimate(), sim.truth)
    assert engine.n_frames == len(frames)
    assert score.abs_c >= 0.99 and score.phase >= 0.9


def test_warm_up_changes_nothing(clean_scan):
    """Warming up after frames arrived leaves the engine on the same path as a cold twin."""
    profile, sim, frames = clean_scan
    engines = [engine_for(profile, planned(sim.positions_m)) for _ in range(2)]
    for engine in engines:
        engine.add_frames(frames[:30], sim.positions_m[:30])
        engine.step(5)
    engines[0].warm_up()
    for engine in engines:
        engine.step(5)
    warm, cold = (engine.estimate() for engine in engines)
    assert warm.iteration == cold.iteration == 10
    np.testing.assert_array_equal(warm.object, cold.object)
    np.testing.assert_array_equal(warm.probe, cold.probe)
    np.testing.assert_array_equal(warm.loss, cold.loss)


def test_no_frames_no_steps(clean_scan):
    profile, sim, _ = clean_scan
    engine = engine_for(profile, planned(sim.positions_m))
    assert np.isnan(engine.step(1)) and engine.iteration == 0


@pytest.mark.parametrize(
    "frames, positions, message",
    [
        (np.zeros((2, 32, 32)), np.zeros((2, 2)), r"frames must be \(k, 64, 64\)"),
        (np.zeros((2, 64, 64)), np.zeros((3, 2)), "2 frames but 3 positions"),
        (np.full((1, 64, 64), np.nan), np.zeros((1, 2)), "must be finite"),
    ],
)
def test_bad_input_is_named(clean_scan, frames, positions, message):
    profile, sim, _ = clean_scan
    engine = engine_for(profile, ScanPlan())
    with pytest.raises(ValueError, match=message):
        engine.add_frames(frames, positions)

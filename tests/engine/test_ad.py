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


def test_unplanned_scan_grows_the_canvas_and_buffer_without_losing_state(clean_scan):
    profile, sim, frames = clean_scan
    engine = engine_for(profile, ScanPlan())  # nothing known in advance
    centre = np.argsort(np.abs(sim.positions_m).max(axis=1))
    first, rest = centre[:20], centre[20:]
    engine.add_frames(frames[first], sim.positions_m[first])
    engine.step(30)
    before = engine.estimate()
    engine.add_frames(frames[rest], sim.positions_m[rest])  # outer points: canvas must grow
    after = engine.estimate()
    assert after.object.shape[0] > before.object.shape[0]
    assert after.object.shape[1] > before.object.shape[1]
    # the old content sits at the same stage coordinates on the grown canvas
    offset = np.rint(
        (np.array(before.object_origin_m) - after.object_origin_m) / after.pixel_size_m
    ).astype(int)
    h, w = before.object.shape
    np.testing.assert_array_equal(
        after.object[offset[0] : offset[0] + h, offset[1] : offset[1] + w], before.object
    )
    engine.step(20)
    engine.refine(60)
    score, _ = score_against_truth(engine.estimate(), sim.truth)
    assert engine.n_frames == len(frames)
    assert score.abs_c >= 0.99 and score.phase >= 0.85


def test_warm_up_changes_nothing(clean_scan):
    profile, sim, _ = clean_scan
    engine = engine_for(profile, planned(sim.positions_m))
    before = engine.estimate()
    engine.warm_up()
    after = engine.estimate()
    np.testing.assert_array_equal(before.object, after.object)
    np.testing.assert_array_equal(before.probe, after.probe)
    assert after.iteration == 0 and np.isnan(engine.step(1))  # no frames: nothing to do


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

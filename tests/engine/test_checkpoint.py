"""Engine state saved to a file and restored: the restored engine continues exactly."""

import numpy as np
import pytest

from ptystream.config import Algorithm
from ptystream.engine import EngineSetup, make_engine
from ptystream.sim.detector import diffraction_pattern
from ptystream.sim.scan import build_simulation
from ptystream.types import ScanPlan


@pytest.fixture(scope="module")
def scan(small_profile):
    profile = small_profile(photons_per_frame=None, n_points=60, object_px=160)
    profile = profile.model_copy(
        update={"engine": profile.engine.model_copy(update={"jit_compile": False})}
    )
    sim = build_simulation(profile)
    frames = np.stack([1e6 * diffraction_pattern(sim.truth, p) for p in sim.positions_m])
    return profile, sim, frames.astype(np.float32)


def fresh(profile, **kwargs):
    return make_engine(
        EngineSetup(profile.instrument.geometry(), profile.engine, plan=ScanPlan(), **kwargs)
    )


@pytest.mark.parametrize("algorithm", ["ad", "mpie"])
def test_restored_engine_takes_the_same_steps(scan, tmp_path, algorithm):
    """No plan, so the canvas grows before the save: shapes, moments (mPIE: momentum terms),
    step counts, pending frames and the sampling generator must all come back."""
    profile, sim, frames = scan
    profile = profile.model_copy(
        update={"engine": profile.engine.model_copy(update={"algorithm": Algorithm(algorithm)})}
    )
    original = fresh(profile)
    original.add_frames(frames[:20], sim.positions_m[:20])
    original.step(10)
    original.add_frames(frames[20:], sim.positions_m[20:])  # grows the canvas, leaves pending
    original.step(3)
    path = tmp_path / "state.npz"
    original.save_state(path)

    restored = fresh(profile)
    restored.load_state(path)
    for engine in (original, restored):
        engine.step(6)
        engine.refine(2)
    a, b = original.estimate(), restored.estimate()
    assert a.object.shape == b.object.shape and a.object_origin_m == b.object_origin_m
    np.testing.assert_array_equal(a.object, b.object)
    np.testing.assert_array_equal(a.probe, b.probe)
    np.testing.assert_array_equal(a.loss, b.loss)
    assert b.n_frames == 60 and b.iteration == a.iteration
    # the defocus the first frames chose is part of the state (it was NaN after a restore)
    assert np.isfinite(a.probe_defocus_m) and b.probe_defocus_m == a.probe_defocus_m


def test_snapshot_in_memory_restores_the_same_engine(scan):
    """restore() of a snapshot() taken earlier puts everything back (the distance search's
    trials start from it): the same steps follow."""
    profile, sim, frames = scan
    engine = fresh(profile)
    engine.add_frames(frames, sim.positions_m)
    engine.step(5)
    start = engine.snapshot()
    first = [engine.step(1) for _ in range(4)]
    engine.restore(start)
    assert engine.iteration == 5
    again = [engine.step(1) for _ in range(4)]
    assert first == again


def test_state_of_another_geometry_is_refused(scan, tmp_path):
    profile, sim, frames = scan
    engine = fresh(profile)
    engine.add_frames(frames[:5], sim.positions_m[:5])
    engine.save_state(tmp_path / "state.npz")
    other = profile.model_copy(
        update={"engine": profile.engine.model_copy(update={"batch_size": 8})}
    )
    with pytest.raises(ValueError, match=r"different settings \(batch_size\)"):
        fresh(other).load_state(tmp_path / "state.npz")


def test_initial_probe_is_rescaled_and_gives_a_head_start(scan):
    profile, sim, frames = scan
    warm = fresh(profile, initial_probe=7.0 * sim.truth.probe)  # any scale
    # against the optics' guess at the nominal defocus (0 here): the defocus search would
    # find a start almost as good as the truth (measured: loss after 20 steps 0.00125 vs 0.00123)
    unsearched = profile.engine.model_copy(update={"probe_defocus_search": False})
    cold = fresh(profile.model_copy(update={"engine": unsearched}))
    for engine in (warm, cold):
        engine.add_frames(frames, sim.positions_m)
    power = np.sum(np.abs(warm.estimate().probe) ** 2)
    # the probe in sqrt(counts) carries the mean pattern's counts: a unit object's power
    assert power == pytest.approx(frames.mean(axis=0).sum(), rel=1e-4)
    losses = [engine.step(20) for engine in (warm, cold)]
    assert losses[0] < 0.5 * losses[1]


def test_initial_probe_of_the_wrong_shape_is_named(scan):
    profile, _, _ = scan
    with pytest.raises(ValueError, match=r"initial probe is \(32, 32\), frames are \(64, 64\)"):
        fresh(profile, initial_probe=np.ones((32, 32), np.complex64))

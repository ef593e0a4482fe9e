"""The AD engine driven directly (no Bluesky, no Tiled), as reprocessing and notebooks use it."""

import numpy as np
import pytest

from ptystream.config import Algorithm, EngineSettings
from ptystream.engine import EngineSetup, canvas, make_engine
from ptystream.metrics import score_against_truth
from ptystream.sim.detector import DetectorModel, diffraction_pattern
from ptystream.sim.scan import build_simulation
from ptystream.types import ScanPlan


@pytest.fixture(scope="module")
def clean_scan(small_profile):
    """A noise-free simulated scan: profile, simulation and its frames (counts)."""
    profile = small_profile(photons_per_frame=None)
    sim = build_simulation(profile)
    frames = np.stack([1e6 * diffraction_pattern(sim.truth, p) for p in sim.positions_m])
    return profile, sim, frames.astype(np.float32)


def engine_for(profile, plan):
    return make_engine(
        EngineSetup(
            profile.instrument.geometry(),
            profile.engine,
            plan=plan,
            probe_defocus_m=profile.instrument.probe_defocus_m,
        ),
    )


def test_streaming_reconstruction_of_a_clean_scan(clean_scan, planned):
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


def test_growing_the_canvas_keeps_object_and_optimiser_state(clean_scan, planned):
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
        make_engine(EngineSetup(geometry, settings, plan=plan))
        for plan in (planned(sim.positions_m), planned(sim.positions_m[first]))
    ]
    for engine in engines:
        engine.add_frames(frames[first], sim.positions_m[first])
        engine.step(30)
        engine.add_frames(frames[rest], sim.positions_m[rest])  # the second must grow
        engine.step(10)
    big, grown = (engine.estimate() for engine in engines)
    # the canvas the second engine planned for the first positions alone
    first_canvas = canvas.canvas_for(
        sim.positions_m[first].min(axis=0),
        sim.positions_m[first].max(axis=0),
        geometry.frame_px,
        grown.pixel_size_m,
        settings.canvas_margin_px,
    )
    assert grown.object.shape[0] > first_canvas.shape[0]
    assert_same_reconstruction(big, grown, atol=2e-4)


def assert_same_reconstruction(small, large, atol):
    """``large``'s canvas holds ``small``'s object where ``small`` is lit, and the same probe."""
    offset = np.rint(
        (np.array(small.object_origin_m) - large.object_origin_m) / small.pixel_size_m
    ).astype(int)
    h, w = small.object.shape
    region = large.object[offset[0] : offset[0] + h, offset[1] : offset[1] + w]
    lit = small.illumination > 1e-3 * small.illumination.max()
    np.testing.assert_allclose(region[lit], small.object[lit], atol=atol)
    np.testing.assert_allclose(large.probe, small.probe, atol=atol)


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


def test_warm_up_changes_nothing(clean_scan, planned):
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


def test_no_frames_no_steps(clean_scan, planned):
    profile, sim, _ = clean_scan
    engine = engine_for(profile, planned(sim.positions_m))
    assert np.isnan(engine.step(1)) and engine.iteration == 0


def reconstruct(profile, sim, frames, settings, planned, mask=None, read_noise_counts=0.0):
    """Stream ``frames`` in chunks of 5 with 4 steps each, then 60 final passes; score it."""
    engine = make_engine(
        EngineSetup(
            profile.instrument.geometry(),
            settings,
            plan=planned(sim.positions_m),
            probe_defocus_m=profile.instrument.probe_defocus_m,
            detector_mask=mask,
            read_noise_counts=read_noise_counts,
        ),
    )
    for i in range(0, len(frames), 5):
        engine.add_frames(frames[i : i + 5], sim.positions_m[i : i + 5])
        engine.step(4)
    engine.refine(60)
    return score_against_truth(engine.estimate(), sim.truth)[0]


@pytest.mark.parametrize(
    "loss, min_phase",
    # measured on this problem: amplitude 0.9998, intensity 0.96, poisson 0.9999
    [("intensity", 0.9), ("poisson", 0.99)],
)
def test_other_losses_reconstruct_a_clean_scan(clean_scan, loss, min_phase, planned):
    profile, sim, frames = clean_scan
    settings = EngineSettings.model_validate({**profile.engine.model_dump(), "loss": loss})
    score = reconstruct(profile, sim, frames, settings, planned)
    assert score.abs_c >= 0.99 and score.amplitude >= 0.98 and score.phase >= min_phase


def test_masked_pixels_never_enter_the_loss(clean_scan, beamstop_and_hot_pixels, planned):
    """A beamstop (zeros) and two hot pixels (1e7 counts): masked, the reconstruction is as good
    as on clean data (measured phase r 0.9999); unmasked they ruin it (phase r 0.17)."""
    profile, sim, frames = clean_scan
    mask, bad = beamstop_and_hot_pixels(frames)
    masked = reconstruct(profile, sim, bad, profile.engine, planned, mask)
    unmasked = reconstruct(profile, sim, bad, profile.engine, planned, None)
    assert masked.abs_c >= 0.999 and masked.phase >= 0.99
    assert unmasked.phase < 0.5


def test_total_variation_fights_noise_at_low_dose(clean_scan, planned):
    """1e5 photons per frame plus read noise sigma 10: measured phase r 0.34 without TV and
    0.82 with weight 1e-3 (0.58 at 3e-4, 0.57 at 1e-2), so the gain is far above noise."""
    profile, sim, _ = clean_scan
    detector = DetectorModel(1e5, 10.0, None, np.random.default_rng(0))
    frames = np.stack([detector.record(diffraction_pattern(sim.truth, p)) for p in sim.positions_m])
    noisy = profile.engine
    plain = reconstruct(
        profile,
        sim,
        frames,
        noisy.model_copy(update={"tv_weight": 0.0}),
        planned,
        read_noise_counts=10.0,
    )
    tv = reconstruct(
        profile,
        sim,
        frames,
        noisy.model_copy(update={"tv_weight": 1e-3}),
        planned,
        read_noise_counts=10.0,
    )
    assert tv.phase > plain.phase + 0.25
    assert tv.abs_c > plain.abs_c


def test_position_correction_repairs_wrong_positions(clean_scan, planned):
    """Frames taken at the true positions, given to the engine with errors of up to 1.5 px.
    Measured: RMS error 1.21 px stays 1.21 without correction (phase r 0.82) and falls to
    0.11 px with it (phase r 0.996)."""
    profile, sim, frames = clean_scan
    dx = profile.instrument.geometry().object_pixel_size_m
    given = sim.positions_m + np.random.default_rng(7).uniform(-1.5, 1.5, (len(frames), 2)) * dx

    def run(correct):
        settings = profile.engine.model_copy(update={"correct_positions": correct})
        engine = make_engine(
            EngineSetup(
                profile.instrument.geometry(),
                settings,
                plan=planned(given),
                probe_defocus_m=profile.instrument.probe_defocus_m,
            ),
        )
        for i in range(0, len(frames), 5):
            engine.add_frames(frames[i : i + 5], given[i : i + 5])
            engine.step(4)
        engine.refine(100)
        estimate = engine.estimate()
        error = (estimate.positions_m - sim.positions_m) / dx
        error -= error.mean(axis=0)  # a common shift only moves the object
        rms = np.sqrt((error**2).sum(axis=1).mean())
        return rms, score_against_truth(estimate, sim.truth)[0]

    plain_rms, plain = run(False)
    fixed_rms, fixed = run(True)
    assert plain_rms > 1.0 and fixed_rms < 0.3
    assert fixed.phase >= 0.95 and fixed.phase > plain.phase + 0.1


def test_mask_of_the_wrong_shape_is_named(clean_scan):
    profile, _, _ = clean_scan
    with pytest.raises(ValueError, match=r"detector mask is \(32, 32\), frames are \(64, 64\)"):
        make_engine(
            EngineSetup(
                profile.instrument.geometry(), profile.engine, detector_mask=np.ones((32, 32), bool)
            )
        )


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


def test_each_batch_takes_new_frames_first_then_distinct_earlier_ones(clean_scan, planned):
    """Which frames a step took shows in the engine's state: with position correction from the
    first step on, every frame in a step's batch has its position's Adam step count
    (``shift_count``) raised by exactly one, whether it is in the batch once or twice, and no
    other frame has (outside the batch the gradient is exactly zero)."""
    profile, sim, frames = clean_scan
    settings = profile.engine.model_copy(
        update={"correct_positions": True, "position_start_step": 0, "jit_compile": False}
    )
    engine = make_engine(
        EngineSetup(profile.instrument.geometry(), settings, plan=planned(sim.positions_m))
    )
    b = settings.batch_size

    def frames_taken_by_one_step():
        before = engine.snapshot().arrays["shift_count"]
        engine.step(1)
        raised = engine.snapshot().arrays["shift_count"] - before
        assert set(np.unique(raised)) <= {0.0, 1.0}
        return np.flatnonzero(raised.any(axis=1))

    engine.add_frames(frames[:40], sim.positions_m[:40])
    engine.refine(0)  # no pass, but every frame counts as seen, as after any refine()
    assert engine.frames_waiting == 0
    engine.add_frames(frames[40:45], sim.positions_m[40:45])
    assert engine.frames_waiting == 5
    taken = frames_taken_by_one_step()
    assert engine.frames_waiting == 0
    assert {40, 41, 42, 43, 44} <= set(taken.tolist())  # the new frames first
    assert len(taken) == b and taken.max() < 45  # a full batch of distinct frames
    for _ in range(50):  # earlier frames only, never repeated within a batch
        taken = frames_taken_by_one_step()
        assert len(taken) == b and taken.max() < 45


@pytest.mark.parametrize("algorithm", ["ad", "epie"])
def test_positions_in_pixels_are_the_same_positions(clean_scan, algorithm):
    profile, sim, frames = clean_scan
    settings = profile.engine.model_copy(update={"algorithm": Algorithm(algorithm)})
    dx = profile.instrument.geometry().object_pixel_size_m
    estimates = []
    for positions, unit in ((sim.positions_m, "m"), (sim.positions_m / dx, "px")):
        engine = make_engine(EngineSetup(profile.instrument.geometry(), settings, plan=ScanPlan()))
        engine.add_frames(frames[:30], positions[:30], unit=unit)
        engine.step(3)
        estimates.append(engine.estimate())
    np.testing.assert_allclose(estimates[1].positions_m, estimates[0].positions_m, rtol=1e-12)
    np.testing.assert_array_equal(estimates[1].object, estimates[0].object)
    with pytest.raises(ValueError, match="position unit must be 'm' or 'px', got 'mm'"):
        engine.add_frames(frames[:1], sim.positions_m[:1], unit="mm")


def test_window_only_updates_on_a_large_canvas_match_whole_canvas_updates(clean_scan, planned):
    """Past ~2 B N^2 canvas pixels the engine updates only the batch's windows (constant cost
    per step); it must take the same steps as the whole-canvas update."""
    profile, sim, frames = clean_scan
    plan = planned(sim.positions_m)
    (y0, y1), (x0, x1) = plan.extent_m
    pad = 200 * profile.instrument.geometry().object_pixel_size_m
    wide = ScanPlan(plan.n_points, ((y0 - pad, y1 + pad), (x0 - pad, x1 + pad)))
    estimates = []
    for p in (plan, wide):
        engine = engine_for(profile, p)
        engine.warm_up()  # must change nothing on either path
        engine.add_frames(frames, sim.positions_m)
        engine.step(30)
        engine.refine(2)
        estimates.append(engine.estimate())
    small, large = estimates
    n, b = profile.instrument.frame_px, profile.engine.batch_size
    assert small.object.size < 2 * b * n * n < large.object.size  # one path each
    assert_same_reconstruction(small, large, atol=1e-4)
    assert np.all(large.object[large.illumination == 0] == 1.0)  # unlit pixels untouched

"""Simulated problems: what each builder makes, that a seed fixes it, and the true lit region."""

import numpy as np
import pytest

from ptystream.config import load_profile, with_overrides
from ptystream.sim import trajectories
from ptystream.sim.problems import (
    NearFieldStudy,
    Problem,
    diffuser_probe,
    far_field_problem,
    near_field_problem,
    paper_object,
    poisson_disc_positions,
    profile_problem,
)
from ptystream.types import Estimate, ScanPlan


@pytest.fixture(scope="module")
def small() -> Problem:
    """A quick far-field problem: 25 positions of 64² frames."""
    return far_field_problem(64, 25, seed=3)


def _estimate_on_truth_grid(problem: Problem) -> Estimate:
    """An estimate whose canvas is the truth's own grid (object = truth)."""
    truth = problem.truth
    return Estimate(
        object=truth.object,
        probe=truth.probe,
        object_origin_m=truth.object_origin_m,
        pixel_size_m=truth.pixel_size_m,
        positions_m=problem.positions_m,
        illumination=np.ones(truth.object.shape, np.float32),
        iteration=0,
        n_frames=len(problem.frames),
        loss=np.zeros((0, 2)),
    )


def test_far_field_problem_has_frames_positions_and_the_truth(small):
    assert small.frames.shape == (25, 64, 64)
    assert small.frames.dtype == np.float32
    assert small.positions_m.shape == (25, 2)
    assert small.geometry.frame_px == 64
    assert small.geometry.propagation == "far_field"
    assert small.truth.probe.shape == (64, 64)
    assert small.truth.pixel_size_m == small.geometry.object_pixel_size_m
    # the engine is told a defocus 10 % off the truth's
    assert small.probe_defocus_m == pytest.approx(1.1 * small.details["probe_defocus_m"])
    assert small.read_noise_counts == 10.0
    assert small.step_px > 0
    # the object covers every probe window
    reach_px = np.abs(small.positions_m).max() / small.truth.pixel_size_m + 32
    assert small.truth.object.shape[0] / 2 >= reach_px


def test_far_field_noise_scales_to_the_peak_count(small):
    # the brightest pixel expects 500 counts: Poisson and read noise (sigma 10) stay within
    # a few sigma of that
    assert 400 < small.frames.max() < 650
    # read noise makes some counts negative, as after dark subtraction
    assert (small.frames < 0).any()


def test_a_seed_fixes_the_problem(small):
    again = far_field_problem(64, 25, seed=3)
    np.testing.assert_array_equal(again.frames, small.frames)
    np.testing.assert_array_equal(again.positions_m, small.positions_m)
    other = far_field_problem(64, 25, seed=4)
    assert not np.array_equal(other.positions_m, small.positions_m)


def test_passes_repeat_the_raster_with_fresh_jitter():
    p = far_field_problem(64, 9, passes=3, seed=0)
    assert p.positions_m.shape == (27, 2)
    first, second = p.positions_m[:9], p.positions_m[9:18]
    # the same raster points, each moved by at most twice the jitter (3 px)
    limit = 2 * 3.0 * p.truth.pixel_size_m + 1e-12
    assert np.abs(first - second).max() <= limit
    assert not np.array_equal(first, second)


def test_the_default_trajectory_is_the_jittered_raster(small):
    # the default draws the raster's jitter first from the seed, as before the keyword existed
    raster = far_field_problem(64, 25, seed=3, trajectory="raster")
    np.testing.assert_array_equal(raster.frames, small.frames)
    np.testing.assert_array_equal(raster.positions_m, small.positions_m)
    step_m = small.step_px * small.truth.pixel_size_m
    jitter = 3.0 / small.step_px
    expected = trajectories.jittered_raster(25, step_m, jitter, np.random.default_rng(3))
    np.testing.assert_array_equal(small.positions_m, expected)
    assert small.details["trajectory"] == "raster"


def test_a_fermat_spiral_problem():
    raster = far_field_problem(64, 25, seed=3)
    spiral = far_field_problem(64, 25, seed=3, trajectory="fermat")
    step_m = raster.step_px * raster.truth.pixel_size_m
    np.testing.assert_allclose(spiral.positions_m, trajectories.fermat_spiral(25, step_m))
    assert spiral.details["trajectory"] == "fermat"
    assert spiral.details["jitter_px"] == 0.0
    assert spiral.step_px is None
    assert spiral.frames.shape == (25, 64, 64)
    assert np.isfinite(spiral.frames).all()
    reach_px = np.abs(spiral.positions_m).max() / spiral.truth.pixel_size_m + 32
    assert spiral.truth.object.shape[0] / 2 >= reach_px
    with pytest.raises(ValueError):
        far_field_problem(64, 9, trajectory="zigzag")


def test_a_given_sample_is_the_truth():
    sample = np.full((400, 400), 0.5 + 0.5j, np.complex64)
    p = far_field_problem(64, 9, sample=sample)
    assert p.truth.object is sample
    assert p.truth.object_origin_m[0] == pytest.approx(-200 * p.truth.pixel_size_m)


def test_plan_and_head(small):
    plan = small.plan
    assert plan.n_points == 25
    (y0, y1), (x0, x1) = plan.extent_m
    assert y0 == small.positions_m[:, 0].min() and y1 == small.positions_m[:, 0].max()
    assert x0 == small.positions_m[:, 1].min() and x1 == small.positions_m[:, 1].max()
    assert ScanPlan.covering(small.positions_m) == plan
    head = small.head(10)
    assert head.frames.shape[0] == 10 and head.positions_m.shape[0] == 10
    assert head.truth is small.truth
    assert small.head(None).frames.shape[0] == 25


def test_lit_mask_is_where_the_true_probe_shone(small):
    estimate = _estimate_on_truth_grid(small)
    mask = small.lit_mask(estimate)
    assert mask.shape == small.truth.object.shape
    assert mask.any() and not mask.all()
    # the probe centres are lit (but maybe a raster corner, seen by one probe), a corner of the
    # canvas is not
    centres = (small.positions_m - np.asarray(small.truth.object_origin_m)) / (
        small.truth.pixel_size_m
    )
    rows, cols = np.round(centres).astype(int).T
    assert mask[rows, cols].mean() > 0.9
    assert not mask[0, 0]
    # a lower threshold lights more
    assert small.lit_mask(estimate, 0.1).sum() > mask.sum()


def test_poisson_disc_points_keep_their_distance():
    # the paper study's disc (0.4 x a 56 px probe) in its 256 px square
    points, seed = poisson_disc_positions(22.4, 256.0, 80, 0)
    assert points.shape == (80, 2)
    assert seed >= 0
    assert points.min() >= 0 and points.max() <= 256
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    assert d[~np.eye(80, dtype=bool)].min() >= 22.4 - 1e-9
    again, seed_again = poisson_disc_positions(22.4, 256.0, 80, 0)
    np.testing.assert_array_equal(again, points)
    assert seed_again == seed


def test_poisson_disc_gives_up_when_no_fill_fits():
    # a disc as wide as the square holds a handful of points, never 80
    with pytest.raises(RuntimeError, match="exactly 80 points"):
        poisson_disc_positions(200.0, 256.0, 80, 0)


def test_paper_object_ranges():
    obj = paper_object()
    assert obj.shape == (512, 512) and obj.dtype == np.complex64
    assert np.abs(obj).min() == pytest.approx(0.3, abs=1e-3)
    assert np.abs(obj).max() == pytest.approx(1.0, abs=1e-3)
    assert np.angle(obj).min() == pytest.approx(-np.pi / 2, abs=1e-3)
    assert np.angle(obj).max() == pytest.approx(np.pi / 2, abs=1e-3)


def test_near_field_study_geometry():
    study = NearFieldStudy()
    assert study.distance_limit_m == pytest.approx(18.98e-3, abs=0.01e-3)
    g = study.geometry(5e-3)
    assert g.propagation == "near_field" and g.distance_m == 5e-3
    assert study.geometry().distance_m == study.distance_m


def test_diffuser_keeps_the_amplitude():
    probe = NearFieldStudy(frame_px=64).pinhole_probe()
    rough = diffuser_probe(probe, seed=1)
    np.testing.assert_allclose(np.abs(rough), np.abs(probe), rtol=1e-5, atol=1e-7)
    assert not np.allclose(np.angle(rough), np.angle(probe))


def test_near_field_problem():
    p = near_field_problem(seed=0)
    assert p.frames.shape == (80, 256, 256)
    assert p.geometry.propagation == "near_field"
    assert p.probe_defocus_m == 0.0
    # whole-pixel positions, every window inside the 512² object
    centres = (p.positions_m - np.asarray(p.truth.object_origin_m)) / p.truth.pixel_size_m
    np.testing.assert_allclose(centres, np.round(centres), atol=1e-6)
    assert centres.min() >= 128 and centres.max() <= 512 - 128
    d = p.details
    assert d["probe_diameter_px"] == pytest.approx(56.0, abs=0.1)
    assert d["disc_radius_px"] == pytest.approx(0.4 * d["probe_diameter_px"])
    assert d["poisson_disc_seed"] >= 0
    assert 200 < d["mean_lit_counts"] < 400
    with pytest.raises(ValueError, match="probe_kind"):
        near_field_problem(probe_kind="laser")


def test_profile_problem_is_the_profile_scan():
    profile = with_overrides(load_profile("demo"), ["sim.n_points=30", "sim.exposure_s=0.0"])
    p = profile_problem(profile)
    n = profile.instrument.frame_px
    assert p.frames.shape == (30, n, n)
    assert p.geometry == profile.instrument.geometry()
    assert p.read_noise_counts == profile.instrument.read_noise_counts
    assert p.probe_defocus_m == profile.instrument.probe_defocus_m
    np.testing.assert_array_equal(profile_problem(profile).frames, p.frames)

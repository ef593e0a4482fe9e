import numpy as np
import pytest
from scipy.spatial import cKDTree

from ptystream.config import TrajectoryKind
from ptystream.sim.trajectories import step_from_overlap, trajectory


def nearest_neighbour_distances(points):
    distances, _ = cKDTree(points).query(points, k=2)
    return distances[:, 1]


@pytest.mark.parametrize("kind", list(TrajectoryKind))
def test_spacing_follows_the_overlap(kind):
    diameter = 2e-6
    step = step_from_overlap(diameter, 0.6)
    assert step == pytest.approx(0.8e-6)
    pts = trajectory(kind, 150, step, jitter_fraction=0.1, rng=np.random.default_rng(0))
    assert pts.shape == (150, 2)
    assert np.median(nearest_neighbour_distances(pts)) == pytest.approx(step, rel=0.25)
    assert np.abs(pts.mean(axis=0)).max() < 1.5 * step  # centred on (0, 0)


def test_raster_jitter_is_bounded_and_seeded():
    step = 1e-6
    a = trajectory(
        TrajectoryKind.RASTER, 16, step, jitter_fraction=0.2, rng=np.random.default_rng(1)
    )
    b = trajectory(
        TrajectoryKind.RASTER, 16, step, jitter_fraction=0.2, rng=np.random.default_rng(1)
    )
    grid = trajectory(
        TrajectoryKind.RASTER, 16, step, jitter_fraction=0.0, rng=np.random.default_rng(1)
    )
    np.testing.assert_array_equal(a, b)
    assert 0 < np.abs(a - grid).max() <= 0.2 * step


def test_overlap_out_of_range():
    with pytest.raises(ValueError, match="overlap must be in"):
        step_from_overlap(1e-6, 1.0)


def test_raster_needs_a_generator():
    with pytest.raises(ValueError, match="random generator"):
        trajectory(TrajectoryKind.RASTER, 4, 1e-6)

"""The object and probe every engine writes predict the frames they were fitted to, in counts
(the units documented on :class:`ptystream.types.Estimate`), computed here in numpy from the
estimate alone, independently of the engines' own forward models."""

from __future__ import annotations

import numpy as np
import pytest

from ptystream.config import EngineSettings
from ptystream.engine import EngineSetup, make_engine
from ptystream.io.results import corner_positions_px
from ptystream.sim.problems import far_field_problem


@pytest.fixture(scope="module")
def poisson_scan():
    """A far-field scan at 500 counts peak, Poisson noise only: the scale of a fit is then set
    by the data, not by how read noise is modelled."""
    return far_field_problem(64, 49, peak_counts=500.0, read_noise_counts=0.0, seed=3)


def predicted_counts(estimate, problem) -> np.ndarray:
    """``(n, N, N)`` centred far-field patterns of ``estimate`` at the problem's positions, each
    window taken at the whole pixel nearest to its corner, summed over probe modes."""
    n = problem.geometry.frame_px
    corners = np.rint(corner_positions_px(estimate, n)).astype(int)
    modes = estimate.probe if estimate.probe.ndim == 3 else estimate.probe[None]
    patterns = []
    for r, c in corners:
        window = estimate.object[r : r + n, c : c + n]
        far = np.fft.fft2(modes * window, norm="ortho")
        patterns.append(np.fft.fftshift((np.abs(far) ** 2).sum(axis=0)))
    return np.stack(patterns)


@pytest.mark.parametrize("algorithm", ["ad", "epie", "mpie"])
def test_the_written_object_and_probe_predict_the_measured_counts(poisson_scan, algorithm):
    """Before the fix, every engine's probe was in units of the frames divided by their maximum
    (predicting 0.1 % of the counts), and mPIE's probe was held at its power without the inverse
    on the object (predicting 76-80 % of the counts on this kind of scan)."""
    settings = EngineSettings.model_validate({"algorithm": algorithm})
    setup = EngineSetup(
        poisson_scan.geometry,
        settings,
        poisson_scan.plan,
        probe_defocus_m=poisson_scan.probe_defocus_m,
    )
    engine = make_engine(setup)
    engine.add_frames(poisson_scan.frames, poisson_scan.positions_m)
    engine.refine(20)
    measured = poisson_scan.frames
    predicted = predicted_counts(engine.estimate(final=True), poisson_scan)
    bright = measured > 0.1 * measured.max()
    per_frame = predicted.sum(axis=(1, 2)) / measured.sum(axis=(1, 2))
    assert np.median(per_frame) == pytest.approx(1.0, abs=0.04)
    assert predicted[bright].sum() / measured[bright].sum() == pytest.approx(1.0, abs=0.04)
    # and pixel by pixel, not only in total: most of the bright pixels within Poisson's 3 sigma
    # plus a 15 % model error
    close = np.abs(predicted - measured) < 3 * np.sqrt(measured + 1) + 0.15 * measured
    assert close[bright].mean() > 0.9
